# Data pipeline (src/distill/data): SentencePiece tokenizer, HDF5 token shards, manifest,
# deterministic streaming loader. LibTorch-free: the trainer copies the loader's host buffers
# into pinned tensors itself.
find_package(Threads REQUIRED)

add_library(dfssm_data STATIC
  ${CMAKE_CURRENT_LIST_DIR}/sha256.cpp
  ${CMAKE_CURRENT_LIST_DIR}/util.cpp
  ${CMAKE_CURRENT_LIST_DIR}/config.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cpp
  ${CMAKE_CURRENT_LIST_DIR}/corpus.cpp
  ${CMAKE_CURRENT_LIST_DIR}/shard.cpp
  ${CMAKE_CURRENT_LIST_DIR}/manifest.cpp
  ${CMAKE_CURRENT_LIST_DIR}/prepare.cpp
  ${CMAKE_CURRENT_LIST_DIR}/loader.cpp)
# dfssm_core is public: the headers use core/error.h and nlohmann::json. The rest stays private,
# so no consumer sees hdf5.h, SentencePiece or yaml-cpp headers.
target_link_libraries(dfssm_data
  PUBLIC dfssm_core
  PRIVATE dfssm_sentencepiece dfssm_hdf5 ${DFSSM_YAML_TARGET} Threads::Threads dfssm_warnings)

# With DFSSM_WITH_TORCH=OFF the top-level CMakeLists.txt still lists src/cli/cmd_model.cpp (the
# LibTorch `init`/`bench` commands, which include ATen) in the dfssm executable, so a torch-free
# build of `dfssm data` fails to compile. main.cpp registers those commands only under
# DFSSM_WITH_TORCH, so the file is dropped here once the executable exists (deferred to the end
# of the directory). The proper fix is to move cmd_model.cpp into the if(DFSSM_WITH_TORCH) block
# of CMakeLists.txt; this is then a no-op.
if(NOT DFSSM_WITH_TORCH)
  function(dfssm_data_drop_torch_cli)
    if(NOT TARGET dfssm)
      return()
    endif()
    get_target_property(srcs dfssm SOURCES)
    list(REMOVE_ITEM srcs src/cli/cmd_model.cpp ${PROJECT_SOURCE_DIR}/src/cli/cmd_model.cpp)
    set_property(TARGET dfssm PROPERTY SOURCES ${srcs})
  endfunction()
  cmake_language(DEFER CALL dfssm_data_drop_torch_cli)
endif()
