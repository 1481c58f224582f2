# Optional CUDA module pyneg._cuda, built from csrc/cuda when nvcc is found (AUTO)
# or demanded (ON). Kernels take raw device pointers and a stream; nothing here
# links libtorch.
if(NOT PYNEG_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "PYNEG_CUDA must be AUTO, ON or OFF, got '${PYNEG_CUDA}'")
endif()
if(PYNEG_CUDA STREQUAL "OFF")
  return()
endif()
file(GLOB PYNEG_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
if(NOT PYNEG_CUDA_SOURCES)
  if(PYNEG_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PYNEG_CUDA=ON but csrc/cuda holds no kernels yet")
  endif()
  return()
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(PYNEG_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PYNEG_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
  message(STATUS "pyneg: nvcc not found, building without pyneg._cuda")
  return()
endif()

# A few explicit architectures keep the compile short: native code for A100
# (sm_80) and H100/H200 (sm_90), plus sm_90 PTX that newer GPUs JIT-compile.
# Override with -DCMAKE_CUDA_ARCHITECTURES=... (e.g. "native" or "89-real").
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
message(STATUS "pyneg: building pyneg._cuda for CUDA architectures ${CMAKE_CUDA_ARCHITECTURES}")

# Kernels (csrc/cuda/*.cu, no pybind11) and their bindings (host compiler,
# no CUDA headers) in one module; the CUDA runtime is linked statically so the
# wheel needs only the driver, and nothing links libtorch.
file(GLOB PYNEG_CUDA_BINDING_SOURCES CONFIGURE_DEPENDS
     ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda_bindings/*.cpp)
python_add_library(_cuda MODULE ${PYNEG_CUDA_SOURCES} ${PYNEG_CUDA_BINDING_SOURCES} WITH_SOABI)
target_include_directories(_cuda PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
target_link_libraries(_cuda PRIVATE pybind11::headers)
set_target_properties(_cuda PROPERTIES CUDA_RUNTIME_LIBRARY Static)
target_compile_options(_cuda PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra>
                                     $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>)
install(TARGETS _cuda DESTINATION pyneg)
