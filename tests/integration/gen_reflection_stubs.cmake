# Generates Python stubs for grpc/reflection/v1alpha/reflection.proto into OUT:
# with grpc_tools.protoc when importable, else protoc + grpc_python_plugin.
execute_process(COMMAND ${PYTHON} -c "import grpc_tools.protoc" RESULT_VARIABLE no_grpc_tools
                OUTPUT_QUIET ERROR_QUIET)
set(proto grpc/reflection/v1alpha/reflection.proto)
if(no_grpc_tools EQUAL 0)
  execute_process(COMMAND ${PYTHON} -m grpc_tools.protoc -I${PROTO_DIR} --python_out=${OUT}
                          --grpc_python_out=${OUT} ${proto}
                  RESULT_VARIABLE rc)
elseif(PLUGIN)
  execute_process(COMMAND ${PROTOC} -I${PROTO_DIR} --python_out=${OUT} --grpc_python_out=${OUT}
                          --plugin=protoc-gen-grpc_python=${PLUGIN} ${proto}
                  RESULT_VARIABLE rc)
else()
  message(FATAL_ERROR "neither grpc_tools nor grpc_python_plugin is available")
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "generating Python reflection stubs failed: ${rc}")
endif()
