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
