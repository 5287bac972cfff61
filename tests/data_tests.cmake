# Data pipeline tests (src/distill/data): CPU only, a few seconds in all. Included from
# tests/CMakeLists.txt when the dfssm_data target exists.
if(TARGET dfssm_data)
  dfssm_test(test_data
    SOURCES test_data_core.cpp test_data_tokenizer.cpp test_data_shard.cpp test_data_prepare.cpp test_data_loader.cpp
    LIBS dfssm_data
    LABELS cpu)
endif()
