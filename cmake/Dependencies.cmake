# Finds dfssm's dependencies. Each missing one stops configuration with a message naming
# the package and how to get it (scripts/setup.sh installs all of them).

macro(dfssm_missing what how)
  message(FATAL_ERROR "dfssm: required dependency '${what}' was not found.\n"
                      "  Install it with: ${how}\n"
                      "  (or run scripts/setup.sh, which installs everything dfssm needs)")
endmacro()

# --- nlohmann/json -------------------------------------------------------------------------
find_package(nlohmann_json 3 QUIET)
if(NOT nlohmann_json_FOUND)
  dfssm_missing("nlohmann_json" "apt-get install nlohmann-json3-dev")
endif()

# --- yaml-cpp (0.7 exports `yaml-cpp`, 0.8 `yaml-cpp::yaml-cpp`) ---------------------------
find_package(yaml-cpp QUIET)
if(TARGET yaml-cpp::yaml-cpp)
  set(DFSSM_YAML_TARGET yaml-cpp::yaml-cpp)
elseif(TARGET yaml-cpp)
  set(DFSSM_YAML_TARGET yaml-cpp)
else()
  dfssm_missing("yaml-cpp" "apt-get install libyaml-cpp-dev")
endif()

# --- SentencePiece (no CMake package on Debian/Ubuntu: pkg-config, then a plain search) ---
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(SENTENCEPIECE QUIET IMPORTED_TARGET sentencepiece)
endif()
if(TARGET PkgConfig::SENTENCEPIECE)
  add_library(dfssm_sentencepiece INTERFACE)
  target_link_libraries(dfssm_sentencepiece INTERFACE PkgConfig::SENTENCEPIECE)
else()
  find_path(SPM_INCLUDE sentencepiece_processor.h)
  find_library(SPM_LIB sentencepiece)
  if(NOT SPM_INCLUDE OR NOT SPM_LIB)
    dfssm_missing("sentencepiece" "apt-get install libsentencepiece-dev")
  endif()
  add_library(dfssm_sentencepiece INTERFACE)
  target_include_directories(dfssm_sentencepiece INTERFACE ${SPM_INCLUDE})
  target_link_libraries(dfssm_sentencepiece INTERFACE ${SPM_LIB})
endif()

# --- HDF5 (C API) --------------------------------------------------------------------------
find_package(HDF5 QUIET COMPONENTS C)
if(NOT HDF5_FOUND)
  dfssm_missing("HDF5" "apt-get install libhdf5-dev")
endif()
add_library(dfssm_hdf5 INTERFACE)
target_include_directories(dfssm_hdf5 INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
target_link_libraries(dfssm_hdf5 INTERFACE ${HDF5_C_LIBRARIES} ${HDF5_LIBRARIES})
target_compile_definitions(dfssm_hdf5 INTERFACE ${HDF5_DEFINITIONS})

# --- Catch2 v3 or v2 (tests/catch_compat.h hides the difference) --------------------------
if(DFSSM_BUILD_TESTS)
  find_package(Catch2 3 QUIET)
  if(Catch2_FOUND)
    set(DFSSM_CATCH_MAIN Catch2::Catch2WithMain)
  else()
    find_package(Catch2 2 QUIET)
    if(NOT Catch2_FOUND)
      dfssm_missing("Catch2 (v2 or v3)" "apt-get install catch2")
    endif()
    add_library(dfssm_catch_main STATIC ${PROJECT_SOURCE_DIR}/tests/catch_main.cpp)
    target_link_libraries(dfssm_catch_main PUBLIC Catch2::Catch2)
    set(DFSSM_CATCH_MAIN dfssm_catch_main)
  endif()
  message(STATUS "dfssm: Catch2 ${Catch2_VERSION}")
endif()

# --- LibTorch, from the torch wheel of a Python (the project venv by default) --------------
if(DFSSM_WITH_TORCH)
  if(NOT DFSSM_TORCH_PYTHON)
    if(EXISTS "${PROJECT_SOURCE_DIR}/.venv/bin/python")
      set(DFSSM_TORCH_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python")
    else()
      find_program(DFSSM_TORCH_PYTHON NAMES python3 python)
    endif()
  endif()
  execute_process(
    COMMAND "${DFSSM_TORCH_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _torch_rc ERROR_QUIET)
  if(_torch_rc EQUAL 0 AND _torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
  endif()
  # Only sm_90 flags from Torch's CUDA setup (it ignores CMAKE_CUDA_ARCHITECTURES).
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(ENV{TORCH_CUDA_ARCH_LIST} "9.0")
  endif()
  find_package(Torch QUIET)
  if(NOT Torch_FOUND)
    dfssm_missing("LibTorch (torch==2.11.0)"
                  "scripts/setup.sh (creates .venv with the torch wheel), or pass -DDFSSM_TORCH_PYTHON=<python with torch>")
  endif()
  message(STATUS "dfssm: LibTorch from ${_torch_prefix} (python: ${DFSSM_TORCH_PYTHON})")
  # Whether this LibTorch was built with CUDA (decides if gpu tests are built).
  execute_process(
    COMMAND "${DFSSM_TORCH_PYTHON}" -c "import torch; print(1 if torch.version.cuda else 0)"
    OUTPUT_VARIABLE DFSSM_TORCH_HAS_CUDA OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
