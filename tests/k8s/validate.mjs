// Offline validation of rendered Kubernetes manifests.
//
//   node validate.mjs --modules DIR/node_modules FILE.yaml [FILE.yaml ...]
//
// Every object is checked against the Kubernetes OpenAPI schema through the ajv validators
// of the npm package kubernetes-models (installed by validate.sh under DIR), then against
// what that schema does not say:
//   unknown-field       a key the schema does not define (a typo such as `readinessProbes`).
//                       The generated validators have no additionalProperties: false, so the
//                       validator runs on a Proxy that records which keys it looked up; a key
//                       it never looked up in an object it inspected is not in the schema.
//   selector            a workload selector that does not match its own pod template labels;
//                       a Service, PodDisruptionBudget or NetworkPolicy selecting no pod
//                       template in the render.
//   name                names that are not DNS-1123 (objects, containers, volumes) or not
//                       IANA service names (ports); malformed label keys and values.
//   pdb                 a PodDisruptionBudget with both minAvailable and maxUnavailable.
//   reference           a volumeMount, configMap volume, serviceName or named port that
//                       points at nothing in the render.
//   duplicate           two objects of one kind and name; two containers, ports or volumes
//                       with one name.
//   policy              quotad's house rules for workloads: probes, requests and limits,
//                       non-root, read-only root filesystem, no capabilities, seccomp.
//
// Prints one line per finding and a summary; exits 1 if anything was found, 2 on a usage or
// setup error.

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

function usage(msg) {
  process.stderr.write(`validate.mjs: ${msg}\nusage: node validate.mjs --modules DIR FILE...\n`);
  process.exit(2);
}

const argv = process.argv.slice(2);
let modules = '';
const files = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--modules') modules = argv[++i] ?? '';
  else files.push(argv[i]);
}
if (!modules || files.length === 0) usage('need --modules and at least one file');
if (!fs.existsSync(path.join(modules, 'kubernetes-models'))) usage(`no kubernetes-models under ${modules}`);

const yaml = await import(pathToFileURL(path.join(modules, 'js-yaml', 'dist', 'js-yaml.mjs')).href);

const findings = [];
function report(rule, obj, where, message) {
  const id = obj ? `${obj.kind ?? '?'}/${obj.metadata?.name ?? '?'}` : '-';
  findings.push({ rule, line: `[${rule}] ${id}${where ? ' ' + where : ''}: ${message}` });
}

// ---------------------------------------------------------------- schema + unknown fields

const schemaCache = new Map();
async function schemaValidator(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (schemaCache.has(key)) return schemaCache.get(key);
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  // kubernetes-models 4.x ships ESM as .mjs beside CommonJS .js; 5.x is ESM in .js.
  const pick = (base) => [`${base}.mjs`, `${base}.js`].find((f) => fs.existsSync(f));
  let validate = null;
  const modelFile = /^[A-Za-z0-9.]*$/.test(group) && /^[a-z0-9]+$/.test(version) && /^[A-Za-z0-9]+$/.test(kind)
      ? pick(path.join(modules, 'kubernetes-models', group, version, kind)) : undefined;
  if (modelFile) {
    const m = /_schemas\/([A-Za-z0-9]+)/.exec(fs.readFileSync(modelFile, 'utf8'));
    const schemaFile = m && pick(path.join(modules, 'kubernetes-models', '_schemas', m[1]));
    if (schemaFile) validate = (await import(pathToFileURL(schemaFile).href)).validate;
  }
  schemaCache.set(key, validate);
  return validate;
}

// Wraps `value` so that every key looked up (get, has) or enumerated (ownKeys) by the
// validator is recorded under its JSON pointer.
function tracked(value, pointer, seen) {
  if (value === null || typeof value !== 'object') return value;
  return new Proxy(value, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof key !== 'string') return v;
      seen.looked(pointer, key);
      return tracked(v, `${pointer}/${key}`, seen);
    },
    has(target, key) {
      if (typeof key === 'string') seen.looked(pointer, key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      seen.enumerated.add(pointer);
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(value, pointer, seen, obj) {
  if (value === null || typeof value !== 'object') return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, `${pointer}/${i}`, seen, obj));
    return;
  }
  const looked = seen.keys.get(pointer);
  const isMap = seen.enumerated.has(pointer);
  for (const key of Object.keys(value)) {
    // An object the validator never inspected is free-form in the schema (or sits under a
    // schema error already reported): nothing to say about its keys.
    if (!isMap && looked && !looked.has(key)) {
      report('unknown-field', obj, `${pointer}/${key}`, 'field is not in the Kubernetes schema');
      continue;
    }
    unknownFields(value[key], `${pointer}/${key}`, seen, obj);
  }
}

async function checkSchema(obj) {
  if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') {
    report('schema', obj, '', 'apiVersion and kind are required');
    return;
  }
  const validate = await schemaValidator(obj.apiVersion, obj.kind);
  if (!validate) {
    report('schema', obj, '', `unknown apiVersion/kind ${obj.apiVersion} ${obj.kind}`);
    return;
  }
  const seen = {
    keys: new Map(),
    enumerated: new Set(),
    looked(pointer, key) {
      if (!this.keys.has(pointer)) this.keys.set(pointer, new Set());
      this.keys.get(pointer).add(key);
    },
  };
  if (!validate(tracked(obj, '', seen))) {
    for (const e of validate.errors ?? []) {
      report('schema', obj, e.instancePath || '/', `${e.keyword} ${JSON.stringify(e.params)}`);
    }
  }
  unknownFields(obj, '', seen, obj);
}

// ---------------------------------------------------------------- names

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

function isLabel(s) { return typeof s === 'string' && s.length <= 63 && DNS1123_LABEL.test(s); }
function isSubdomain(s) { return typeof s === 'string' && s.length <= 253 && DNS1123_SUBDOMAIN.test(s); }
// IANA_SVC_NAME: at most 15 characters, lowercase letters, digits and '-', at least one
// letter, no leading, trailing or doubled '-'.
function isPortName(s) {
  return typeof s === 'string' && s.length <= 15 && /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(s) &&
      /[a-z]/.test(s) && !s.includes('--');
}
function isQualifiedName(k) {
  const parts = k.split('/');
  if (parts.length > 2) return false;
  const name = parts[parts.length - 1];
  if (parts.length === 2 && !isSubdomain(parts[0])) return false;
  return name.length <= 63 && LABEL_NAME.test(name);
}

// Kinds whose name becomes a DNS label (a Service's DNS name, a StatefulSet's pod hostnames).
const LABEL_NAMED = new Set(['Service', 'Namespace', 'StatefulSet']);

function checkLabels(obj, where, labels) {
  if (!labels || typeof labels !== 'object') return;
  for (const [k, v] of Object.entries(labels)) {
    if (!isQualifiedName(k)) report('name', obj, where, `label key "${k}" is not a qualified name`);
    if (typeof v !== 'string' || v.length > 63 || !LABEL_VALUE.test(v)) {
      report('name', obj, where, `label ${k}="${v}" is not a valid label value`);
    }
  }
}

function checkNames(obj) {
  const name = obj.metadata?.name;
  const ok = LABEL_NAMED.has(obj.kind) ? isLabel(name) : isSubdomain(name);
  if (!ok) {
    report('name', obj, '/metadata/name',
           `"${name}" is not a DNS-1123 ${LABEL_NAMED.has(obj.kind) ? 'label' : 'subdomain'}`);
  }
  if (obj.metadata?.namespace !== undefined && !isLabel(obj.metadata.namespace)) {
    report('name', obj, '/metadata/namespace', `"${obj.metadata.namespace}" is not a DNS-1123 label`);
  }
  checkLabels(obj, '/metadata/labels', obj.metadata?.labels);
  if (obj.kind === 'ConfigMap') {
    for (const k of Object.keys({ ...obj.data, ...obj.binaryData })) {
      if (!/^[-._a-zA-Z0-9]+$/.test(k) || k.length > 253) {
        report('name', obj, '/data', `key "${k}" is not a valid ConfigMap key`);
      }
    }
  }
}

// ---------------------------------------------------------------- selectors and pods

const WORKLOADS = new Set(['Deployment', 'StatefulSet', 'ReplicaSet', 'DaemonSet', 'Job']);

function matches(selector, labels) {
  labels = labels ?? {};
  for (const [k, v] of Object.entries(selector?.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector?.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    const inValues = has && (e.values ?? []).includes(labels[e.key]);
    if (e.operator === 'In' && !inValues) return false;
    if (e.operator === 'NotIn' && inValues) return false;
    if (e.operator === 'Exists' && !has) return false;
    if (e.operator === 'DoesNotExist' && has) return false;
  }
  return true;
}
function emptySelector(s) {
  return !s || (Object.keys(s.matchLabels ?? {}).length === 0 && (s.matchExpressions ?? []).length === 0);
}

function duplicates(obj, where, items, what) {
  const seen = new Set();
  for (const it of items ?? []) {
    const n = it?.name;
    if (n === undefined) continue;
    if (seen.has(n)) report('duplicate', obj, where, `two ${what} named "${n}"`);
    seen.add(n);
  }
}

function checkPodSpec(obj, spec, where, claimNames, configMaps) {
  if (!spec || typeof spec !== 'object') return;
  const containers = [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
  duplicates(obj, `${where}/containers`, containers, 'containers');
  duplicates(obj, `${where}/volumes`, spec.volumes, 'volumes');
  const volumeNames = new Set([...(spec.volumes ?? []).map((v) => v?.name), ...claimNames]);
  for (const v of spec.volumes ?? []) {
    if (!isLabel(v?.name)) report('name', obj, `${where}/volumes`, `volume "${v?.name}" is not a DNS-1123 label`);
    const cm = v?.configMap;
    if (cm && !cm.optional && configMaps && !configMaps.has(cm.name)) {
      report('reference', obj, `${where}/volumes/${v.name}`, `ConfigMap "${cm.name}" is not in the render`);
    }
  }
  const psc = spec.securityContext ?? {};
  for (const c of spec.containers ?? []) {
    const cw = `${where}/containers/${c?.name}`;
    if (!isLabel(c?.name)) report('name', obj, cw, `container "${c?.name}" is not a DNS-1123 label`);
    duplicates(obj, `${cw}/ports`, c?.ports, 'ports');
    const portNames = new Set();
    for (const p of c?.ports ?? []) {
      if (p?.name !== undefined) {
        if (!isPortName(p.name)) report('name', obj, `${cw}/ports`, `port name "${p.name}" is not an IANA service name`);
        portNames.add(p.name);
      }
    }
    for (const m of c?.volumeMounts ?? []) {
      if (!volumeNames.has(m?.name)) report('reference', obj, `${cw}/volumeMounts`, `volume "${m?.name}" is not defined`);
    }
    for (const probe of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
      for (const h of ['httpGet', 'tcpSocket']) {
        const port = c?.[probe]?.[h]?.port;
        if (typeof port === 'string' && !portNames.has(port)) {
          report('reference', obj, `${cw}/${probe}`, `named port "${port}" is not a container port`);
        }
      }
    }
    // House policy for quotad workloads.
    const sc = c?.securityContext ?? {};
    const policy = (msg) => report('policy', obj, cw, msg);
    if (!c?.livenessProbe) policy('no livenessProbe');
    if (!c?.readinessProbe) policy('no readinessProbe');
    for (const r of ['cpu', 'memory']) {
      if (!c?.resources?.requests?.[r]) policy(`no ${r} request`);
      if (!c?.resources?.limits?.[r]) policy(`no ${r} limit`);
    }
    if ((sc.runAsNonRoot ?? psc.runAsNonRoot) !== true) policy('runAsNonRoot is not true');
    if ((sc.runAsUser ?? psc.runAsUser) === 0) policy('runs as uid 0');
    if (sc.readOnlyRootFilesystem !== true) policy('readOnlyRootFilesystem is not true');
    if (sc.allowPrivilegeEscalation !== false) policy('allowPrivilegeEscalation is not false');
    if (sc.privileged === true) policy('privileged');
    if (!(sc.capabilities?.drop ?? []).includes('ALL')) policy('capabilities do not drop ALL');
    if ((sc.capabilities?.add ?? []).length > 0) policy('adds capabilities');
    const seccomp = sc.seccompProfile?.type ?? psc.seccompProfile?.type;
    if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') policy('seccompProfile is not RuntimeDefault');
  }
}

// ---------------------------------------------------------------- whole render

async function checkRender(file, objs) {
  const ns = (o) => o.metadata?.namespace ?? '';
  const pods = [];       // {ns, labels, ports:Set} of every pod template
  const services = new Set();
  const configMaps = new Map();
  const keys = new Set();
  for (const o of objs) {
    const key = `${o.apiVersion?.split('/').length > 1 ? o.apiVersion.split('/')[0] : ''}/${o.kind}/${ns(o)}/${o.metadata?.name}`;
    if (keys.has(key)) report('duplicate', o, '', 'the render holds this object twice');
    keys.add(key);
    if (o.kind === 'Service') services.add(`${ns(o)}/${o.metadata?.name}`);
    if (o.kind === 'ConfigMap') configMaps.set(`${ns(o)}/${o.metadata?.name}`, o);
    if (WORKLOADS.has(o.kind) && o.spec?.template) {
      const ports = new Set();
      for (const c of o.spec.template.spec?.containers ?? []) {
        for (const p of c?.ports ?? []) { if (p?.name) ports.add(p.name); ports.add(p?.containerPort); }
      }
      pods.push({ ns: ns(o), labels: o.spec.template.metadata?.labels ?? {}, ports });
    }
    if (o.kind === 'Pod') pods.push({ ns: ns(o), labels: o.metadata?.labels ?? {}, ports: new Set() });
  }

  for (const o of objs) {
    await checkSchema(o);
    checkNames(o);
    const here = pods.filter((p) => p.ns === ns(o));
    const cmNames = new Set([...configMaps.keys()].filter((k) => k.startsWith(`${ns(o)}/`)).map((k) => k.split('/')[1]));

    if (WORKLOADS.has(o.kind)) {
      const sel = o.spec?.selector;
      const tl = o.spec?.template?.metadata?.labels;
      checkLabels(o, '/spec/template/metadata/labels', tl);
      if (o.kind !== 'Job' && emptySelector(sel)) report('selector', o, '/spec/selector', 'empty selector');
      else if (sel && !matches(sel, tl)) {
        report('selector', o, '/spec/selector', 'selector does not match the pod template labels');
      }
      const claims = (o.spec?.volumeClaimTemplates ?? []).map((t) => t?.metadata?.name);
      for (const n of claims) {
        if (!isLabel(n)) report('name', o, '/spec/volumeClaimTemplates', `"${n}" is not a DNS-1123 label`);
      }
      if (o.kind === 'StatefulSet' && o.spec?.serviceName && !services.has(`${ns(o)}/${o.spec.serviceName}`)) {
        report('reference', o, '/spec/serviceName', `Service "${o.spec.serviceName}" is not in the render`);
      }
      checkPodSpec(o, o.spec?.template?.spec, '/spec/template/spec', claims, cmNames);
    }
    if (o.kind === 'Pod') checkPodSpec(o, o.spec, '/spec', [], cmNames);

    if (o.kind === 'Service' && o.spec?.selector && pods.length > 0) {
      const sel = { matchLabels: o.spec.selector };
      const selected = here.filter((p) => matches(sel, p.labels));
      if (selected.length === 0) report('selector', o, '/spec/selector', 'selects no pod template in the render');
      for (const p of o.spec.ports ?? []) {
        if (!isPortName(p?.name) && p?.name !== undefined) report('name', o, '/spec/ports', `port name "${p.name}" is not an IANA service name`);
        const t = p?.targetPort ?? p?.port;
        if (selected.length > 0 && !selected.some((pod) => pod.ports.has(t))) {
          report('reference', o, '/spec/ports', `targetPort ${JSON.stringify(t)} is not a port of the selected pods`);
        }
      }
      duplicates(o, '/spec/ports', o.spec.ports, 'ports');
    }
    if (o.kind === 'PodDisruptionBudget') {
      if (o.spec?.minAvailable !== undefined && o.spec?.maxUnavailable !== undefined) {
        report('pdb', o, '/spec', 'minAvailable and maxUnavailable are mutually exclusive');
      }
      if (emptySelector(o.spec?.selector)) report('selector', o, '/spec/selector', 'empty selector (selects every pod)');
      else if (pods.length > 0 && !here.some((p) => matches(o.spec.selector, p.labels))) {
        report('selector', o, '/spec/selector', 'selects no pod template in the render');
      }
    }
    if (o.kind === 'NetworkPolicy' && pods.length > 0 && !emptySelector(o.spec?.podSelector) &&
        !here.some((p) => matches(o.spec.podSelector, p.labels))) {
      report('selector', o, '/spec/podSelector', 'selects no pod template in the render');
    }
  }
}

let setupError = false;
for (const file of files) {
  let objs;
  try {
    objs = yaml.loadAll(fs.readFileSync(file, 'utf8')).filter((o) => o !== null && o !== undefined);
  } catch (e) {
    process.stderr.write(`validate.mjs: ${file}: ${e.message}\n`);
    setupError = true;
    continue;
  }
  const before = findings.length;
  await checkRender(file, objs);
  for (const f of findings.slice(before)) process.stdout.write(`FAIL ${file} ${f.line}\n`);
  process.stdout.write(`${file}: ${objs.length} objects, ${findings.length - before} findings\n`);
}
if (setupError) process.exit(2);
process.exit(findings.length > 0 ? 1 : 0);
