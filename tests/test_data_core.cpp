// Data pipeline building blocks: SHA-256, UTF-8, chunking, globs, shuffling, the YAML config.
#include <set>

#include <sys/stat.h>

#include "tests/catch_compat.h"
#include "tests/test_data_util.h"

#include "distill/data/config.h"
#include "distill/data/corpus.h"
#include "distill/data/sha256.h"
#include "distill/data/util.h"

using namespace dfssm;
using namespace dfssm::data;
using dfssm::test::contains;
using dfssm::test::error_of;
using dfssm::test::TempDir;
using dfssm::test::write_bytes;

TEST_CASE("sha256 matches the FIPS 180-4 test vectors", "[data]") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  CHECK(sha256_hex(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Incremental updates of odd sizes give the same digest.
  Sha256 h;
  for (size_t p = 0; p < million.size();) {
    const size_t n = std::min<size_t>(1 + p % 97, million.size() - p);
    h.update(million.data() + p, n);
    p += n;
  }
  CHECK(h.hex_digest() == sha256_hex(million));
  TempDir dir("sha");
  write_bytes(dir / "f", "abc");
  CHECK(sha256_file(dir / "f") == sha256_hex("abc"));
  CHECK(contains(error_of([&] { sha256_file(dir / "missing"); }), "cannot open"));
}

TEST_CASE("UTF-8 validation", "[data]") {
  size_t bad = 99;
  CHECK(valid_utf8("plain ascii, long enough for the fast path"));
  CHECK(valid_utf8("caf\xc3\xa9 \xe6\x95\xb0 \xf0\x9f\x98\x80"));
  CHECK(!valid_utf8("ab\xc0\x80", &bad));  // overlong
  CHECK(bad == 2);
  CHECK(!valid_utf8("\xed\xa0\x80"));        // surrogate
  CHECK(!valid_utf8("\xf5\x80\x80\x80"));    // > U+10FFFF
  CHECK(!valid_utf8("0123456789\xe6\x95", &bad));  // truncated
  CHECK(bad == 10);
  CHECK(!valid_utf8("latin-1 \xe9t\xe9"));
}

TEST_CASE("split_chunks covers the text, cuts after newlines and never inside a character", "[data]") {
  const std::string text = dfssm::test::generated_text(3, 200) + std::string(300, 'x') + "\xe6\x95\xb0\xe6\x8d\xae";
  for (size_t max : {8, 64, 300, 4096}) {
    const auto pieces = split_chunks(text, max);
    std::string joined;
    for (auto p : pieces) {
      CHECK(p.size() <= max);
      CHECK(valid_utf8(p));
      joined += std::string(p);
    }
    CHECK(joined == text);
  }
  const auto lines = split_chunks("aa\nbb\ncc\n", 7);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == "aa\nbb\n");
}

TEST_CASE("glob matching and path expansion", "[data]") {
  CHECK(glob_match("*.py", "a.py"));
  CHECK(!glob_match("*.py", "d/a.py"));
  CHECK(glob_match("**/*.py", "a.py"));
  CHECK(glob_match("**/*.py", "x/y/a.py"));
  CHECK(glob_match("x/**", "x/y/z"));
  CHECK(glob_match("x/**", "x"));
  CHECK(glob_match("a?c", "abc"));
  CHECK(!glob_match("a?c", "ac"));
  CHECK(glob_match("**/test/**", "lib/test/t.py"));
  CHECK(!glob_match("**/test/**", "lib/tests/t.py"));

  TempDir dir("glob");
  for (const char* f : {"a.py", "b.txt", "sub/c.py", "sub/deep/d.py", "site-packages/e.py", "sub/deep/f.txt"})
    write_bytes(dir / f, "x");
  auto rels = [](const std::vector<FoundFile>& v) {
    std::vector<std::string> r;
    for (const auto& f : v) r.push_back(f.rel);
    return r;
  };
  CHECK(rels(expand_path(dir / "**/*.py", {"site-packages/**"})) ==
        std::vector<std::string>{"a.py", "sub/c.py", "sub/deep/d.py"});
  CHECK(rels(expand_path(dir / "*.py", {})) == std::vector<std::string>{"a.py"});
  CHECK(rels(expand_path(dir / "sub/*/*.txt", {})) == std::vector<std::string>{"deep/f.txt"});
  CHECK(expand_path(dir.str(), {"**/*.txt", "site-packages"}).size() == 3);
  CHECK(expand_path(dir / "a.py", {}).size() == 1);
  CHECK(expand_path(dir / "*.none", {}).empty());
  CHECK(contains(error_of([&] { expand_path(dir / "missing", {}); }), "does not exist"));
  CHECK(contains(error_of([&] { expand_path(dir / "missing/*.py", {}); }), "does not exist"));
}

TEST_CASE("permutations are deterministic, complete and seed-dependent", "[data]") {
  const auto a = permutation(1000, 42), b = permutation(1000, 42), c = permutation(1000, 43);
  CHECK(a == b);
  CHECK(a != c);
  CHECK(std::set<uint32_t>(a.begin(), a.end()).size() == 1000);
  // Pinned values: the same on every platform (no std:: distributions involved).
  Rng r(5);
  const uint64_t first = r.next();
  CHECK(first == splitmix64(5));
  CHECK(permutation(1, 9) == std::vector<uint32_t>{0});
}

TEST_CASE("data config: defaults, overrides and errors that say what to fix", "[data]") {
  const std::string yaml =
      "output: runs/x\n"
      "sources:\n"
      "  - path: corpus/**/*.txt\n"
      "    exclude: [skip/**]\n"
      "  - {python: stdlib, path: '**/*.py'}\n"
      "tokenizer:\n"
      "  vocab_size: 1024\n";
  const DataConfig c = parse_data_config(yaml, "t.yaml");
  CHECK(c.output == "runs/x");
  REQUIRE(c.sources.size() == 2);
  CHECK(c.sources[0].exclude == std::vector<std::string>{"skip/**"});
  CHECK(c.sources[1].describe() == "python:stdlib/**/*.py");
  CHECK(c.tokenizer.vocab_size == 1024);
  CHECK(c.tokenizer.type == "bpe");
  CHECK(c.val_fraction == 0.01);
  CHECK(c.on_invalid_utf8 == "skip");

  const DataConfig o = parse_data_config(yaml, "t.yaml",
                                         {{"tokenizer.vocab_size", "8192"},
                                          {"output", "runs/y"},
                                          {"sources.0.path", "other/*.md"},
                                          {"val_fraction", "0.1"},
                                          {"tokenizer.type", "unigram"}});
  CHECK(o.tokenizer.vocab_size == 8192);
  CHECK(o.output == "runs/y");
  CHECK(o.sources[0].path == "other/*.md");
  CHECK(o.val_fraction == 0.1);
  CHECK(o.tokenizer.type == "unigram");

  CHECK(contains(error_of([&] { parse_data_config(yaml, "t.yaml", {{"tokenizer.vocab", "1"}}); }),
                 "unknown key 'tokenizer.vocab'"));
  CHECK(contains(error_of([&] { parse_data_config(yaml + "shards: 3\n", "t.yaml"); }), "unknown key 'shards'"));
  CHECK(contains(error_of([&] { parse_data_config(yaml, "t.yaml", {{"tokenizer.vocab_size", "many"}}); }),
                 "expects an integer, got 'many'"));
  CHECK(contains(error_of([&] { parse_data_config(yaml, "t.yaml", {{"sources.5.path", "x"}}); }), "indexes a list"));
  CHECK(contains(error_of([&] { parse_data_config(yaml, "t.yaml", {{"output.x", "1"}}); }), "single value"));
  CHECK(contains(error_of([&] { parse_data_config(yaml, "t.yaml", {{"val_fraction", "0.9"}}); }), "val_fraction"));
  CHECK(contains(error_of([&] { parse_data_config(yaml, "t.yaml", {{"tokenizer.type", "wordpiece"}}); }),
                 "tokenizer.type must be"));
  CHECK(contains(error_of([&] { parse_data_config("sources: [a]\n", "t.yaml"); }), "'output' is required"));
  CHECK(contains(error_of([&] { parse_data_config("output: x\n", "t.yaml"); }), "'sources' is empty"));
  CHECK(contains(error_of([&] { parse_data_config("output: [\n", "t.yaml"); }), "invalid YAML"));
  CHECK(contains(error_of([&] { parse_data_config(yaml, "t.yaml", {{"tokenizer.type", "none"}}); }), "eos_id"));
  CHECK(contains(error_of([&] { load_data_config("/nonexistent/data.yaml"); }), "cannot open"));
}

TEST_CASE("python: sources resolve through the interpreter's sysconfig paths", "[data]") {
  TempDir dir("python_src");
  // A stand-in interpreter: answers sysconfig.get_paths()[...] for stdlib and purelib with two
  // fixed directories, so the test needs no real Python and gives the same files everywhere.
  write_bytes(dir / "lib/os.py", "import sys\n");
  write_bytes(dir / "lib/site-packages/pkg/mod.py", "x = 1\n");  // like pyenv: inside stdlib
  write_bytes(dir / "site/pkg/__init__.py", "");
  write_bytes(dir / "site/pkg/core.py", "def f():\n    return 1\n");
  write_bytes(dir / "site/pkg/data.json", "{}");
  const std::string py = dir / "fakepython";
  write_bytes(py, "#!/bin/sh\ncase \"$2\" in\n  *purelib*) echo '" + (dir / "site") + "' ;;\n  *stdlib*) echo '" +
                      (dir / "lib") + "' ;;\n  *) exit 1 ;;\nesac\n");
  REQUIRE(::chmod(py.c_str(), 0755) == 0);

  CHECK(python_path(py, "purelib") == dir / "site");
  CHECK(python_path(py, "stdlib") == dir / "lib");
  CHECK(contains(error_of([&] { python_path(py, "platlib"); }), "could not locate Python's platlib directory"));
  const std::string e = error_of([&] { python_path(dir / "no-such-python", "purelib"); });
  INFO(e);
  CHECK(contains(e, "could not locate Python's purelib directory"));
  CHECK(contains(e, "python="));

  const DataConfig c = parse_data_config(
      "output: out\npython: " + py +
          "\nsources:\n  - {python: purelib, path: '**/*.py'}\n"
          "  - {python: stdlib, path: '**/*.py', exclude: ['site-packages/**']}\n",
      "t.yaml");
  CHECK(c.sources[0].describe() == "python:purelib/**/*.py");
  std::vector<std::string> resolved;
  const auto files = expand_sources(c, &resolved);
  REQUIRE(files.size() == 3);
  CHECK(files[0].key == "pkg/__init__.py");
  CHECK(files[1].key == "pkg/core.py");
  CHECK(files[2].key == "os.py");  // the stdlib source, its site-packages excluded
  CHECK(files[0].source == 0);
  CHECK(files[2].source == 1);
  CHECK(resolved[0] == dir / "site" + "/**/*.py");

  CHECK(contains(error_of([&] { parse_data_config("output: o\nsources: [{python: site-packages}]\n", "t.yaml"); }),
                 "'python' must be stdlib, purelib or platlib, got 'site-packages'"));
}

TEST_CASE("the shipped data configs parse", "[data]") {
  const std::string root = dfssm::test::source_dir() + "/configs/";
  const DataConfig s = load_data_config(root + "data_stdlib.yaml");
  REQUIRE(s.sources.size() == 1);
  CHECK(s.sources[0].python == "stdlib");
  CHECK(s.tokenizer.vocab_size == 4096);
  const DataConfig p = load_data_config(root + "data_sitepackages.yaml");
  REQUIRE(p.sources.size() == 1);
  CHECK(p.sources[0].describe() == "python:purelib/**/*.py");
  CHECK(p.tokenizer.vocab_size == 32000);
  CHECK(p.tokenizer.sample_bytes > s.tokenizer.sample_bytes);
  CHECK(p.output != s.output);
}
