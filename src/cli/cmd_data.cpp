// `dfssm data prepare|inspect|bench`: the data pipeline's commands (src/distill/data).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "distill/data/config.h"
#include "distill/data/loader.h"
#include "distill/data/manifest.h"
#include "distill/data/prepare.h"
#include "distill/data/tokenizer.h"
#include "distill/data/util.h"

namespace fs = std::filesystem;

namespace dfssm::cli {

const char* const kDataUsage =
    "usage: dfssm data prepare <config.yaml> [key=value ...]\n"
    "       dfssm data inspect <dataset-dir> [--verify] [--sample-tokens N] [--seed S]\n"
    "       dfssm data bench <dataset-dir> [--seq-len 2048] [--batch 8] [--seconds 3] [--threads N]\n"
    "                        [--text-mb 16] [--prefetch 4]\n\n"
    "prepare  reads the sources of a data config (text files, directories, globs, JSONL, pre-tokenized\n"
    "         .bin/.npy), trains or loads a SentencePiece tokenizer, and writes HDF5 token shards, the\n"
    "         tokenizer and manifest.json (train/val split by documents) to the config's `output`.\n"
    "         Overrides use dotted keys: tokenizer.vocab_size=8192 output=runs/data/x sources.0.path=...\n"
    "         Example: dfssm data prepare configs/data_stdlib.yaml\n"
    "inspect  checks a prepared dataset against its manifest and prints totals, sources, a detokenized\n"
    "         sample and a histogram of document lengths. --verify also checks every shard's SHA-256.\n"
    "bench    measures tokenization throughput (re-encoding decoded training text on 1 and N threads)\n"
    "         and loader throughput (random windows from the HDF5 shards, with and without prefetch).\n\n"
    "Formats and every config key: docs/data.md.\n";

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int data_prepare(int argc, char** argv) {
  std::string config;
  std::vector<std::pair<std::string, std::string>> overrides;
  bool quiet = false;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a == "--quiet" || a == "-q") {
      quiet = true;
    } else if (a.rfind("--", 0) == 0) {
      throw Error(str("unknown flag ", a, " (dfssm data prepare <config.yaml> [key=value ...] [--quiet])"));
    } else if (eq != std::string::npos && eq > 0 && a.find('/') > eq) {
      overrides.emplace_back(a.substr(0, eq), a.substr(eq + 1));
    } else {
      DFSSM_CHECK(config.empty(), "dfssm data prepare takes one config file; got '", config, "' and '", a,
                  "' (overrides are key=value)");
      config = a;
    }
  }
  DFSSM_CHECK(!config.empty(), "usage: dfssm data prepare <config.yaml> [key=value ...]");
  const data::DataConfig cfg = data::load_data_config(config, overrides);
  data::PrepareLog log;
  if (!quiet) log.info = [](const std::string& s) { std::printf("%s\n", s.c_str()), std::fflush(stdout); };
  log.warn = [](const std::string& s) { std::fprintf(stderr, "warning: %s\n", s.c_str()); };
  data::prepare_data(cfg, log);
  return 0;
}

std::string printable_sample(const std::string& s, bool escape_whitespace = false) {
  std::string out;
  for (unsigned char c : s) {
    if (escape_whitespace && c == '\n') out += "\\n";
    else if (escape_whitespace && c == '\t') out += "\\t";
    else if (c == '\n' || c == '\t' || c >= 0x20) out += char(c);
    else out += str("\\x", "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]);
  }
  return out;
}

int data_inspect(int argc, char** argv) {
  Args args(argc, argv, {"verify"});
  const bool verify = args.has("verify");
  const long long sample_tokens = args.get_int("sample-tokens", 160);
  const long long seed = args.get_int("seed", 0);
  args.check_unused();
  DFSSM_CHECK(args.positionals().size() == 1, "usage: dfssm data inspect <dataset-dir> [--verify]");
  const std::string dir = args.positionals()[0];
  const data::Manifest m = data::read_manifest(dir);

  std::printf("dataset:   %s  (%s v%d, %s)\n", dir.c_str(), "dfssm-tokens", m.format_version, m.created_by.c_str());
  std::printf("tokenizer: %s%s%s  vocab %lld  eos %lld  bos %lld%s  sha256 %s\n", m.tokenizer_type.c_str(),
              m.tokenizer_file.empty() ? "" : " ", m.tokenizer_file.c_str(), (long long)m.vocab_size,
              (long long)m.eos_id, (long long)m.bos_id, m.add_bos ? " (prepended)" : "", m.tokenizer_sha256.c_str());
  std::printf("tokens:    %s, seed %llu, val_fraction %g (by documents)\n\n", m.dtype.c_str(),
              (unsigned long long)m.seed, m.val_fraction);

  std::printf("%-6s %7s %12s %15s %12s\n", "split", "shards", "documents", "tokens", "bytes");
  int64_t all_tokens = 0;
  for (const auto& [name, s] : m.splits) {
    uint64_t bytes = 0;
    for (const auto& e : s.shards) bytes += e.bytes;
    all_tokens += s.tokens;
    std::printf("%-6s %7zu %12s %15s %12s\n", name.c_str(), s.shards.size(), data::with_commas(uint64_t(s.documents)).c_str(),
                data::with_commas(uint64_t(s.tokens)).c_str(), data::human_bytes(bytes).c_str());
  }
  std::printf("total  %7s %12s %15s\n\n", "", "", data::with_commas(uint64_t(all_tokens)).c_str());

  std::printf("sources:\n");
  for (size_t i = 0; i < m.sources.size(); ++i) {
    const auto& s = m.sources[i];
    const auto& sk = s.value("skipped", nlohmann::json::object());
    std::printf("  #%zu %s  (%s)\n     %llu files (%s), %llu documents, %s tokens; skipped: %llu not UTF-8, %llu empty, %llu "
                "without the field\n",
                i, s.value("spec", "?").c_str(), s.value("resolved", "").c_str(), (unsigned long long)s.value("files", 0ull),
                data::human_bytes(s.value("bytes", 0ull)).c_str(), (unsigned long long)s.value("documents", 0ull),
                data::with_commas(s.value("tokens", 0ull)).c_str(), (unsigned long long)sk.value("invalid_utf8", 0ull),
                (unsigned long long)sk.value("empty", 0ull), (unsigned long long)sk.value("missing_field", 0ull));
  }
  if (!m.stats.empty() && m.stats.value("seconds_total", 0.0) > 0) {
    std::printf("prepared in %.1f s (tokenizer %.1f s), tokenization %.2f MB/s on %d threads, %.2f bytes/token\n",
                m.stats.value("seconds_total", 0.0), m.stats.value("seconds_tokenizer", 0.0),
                m.stats.value("tokenize_mb_per_s", 0.0), m.stats.value("threads", 0),
                m.stats.value("bytes_per_token", 0.0));
  }

  // Open (and check) every shard of every split.
  std::vector<uint64_t> lengths;
  std::map<std::string, std::vector<std::unique_ptr<data::ShardReader>>> readers;
  for (const auto& [name, s] : m.splits) readers[name] = data::open_split(dir, m, name, verify);
  std::printf("\nshards: all %zu open and match manifest.json%s\n",
              readers["train"].size() + (readers.count("val") ? readers["val"].size() : 0),
              verify ? " (SHA-256 verified)" : " (--verify also checks SHA-256)");
  for (const auto& r : readers["train"]) {
    const auto off = r->doc_offsets();
    for (size_t k = 1; k < off.size(); ++k) lengths.push_back(off[k] - off[k - 1]);
  }

  // A detokenized sample: a train document chosen by --seed.
  if (!readers["train"].empty() && !lengths.empty()) {
    data::Rng rng(uint64_t(seed) + 1);
    const size_t shard = size_t(rng.below(readers["train"].size()));
    const auto& r = readers["train"][shard];
    const auto off = r->doc_offsets();
    const size_t doc = size_t(rng.below(off.size() - 1));
    const int64_t n = std::min<int64_t>(int64_t(off[doc + 1] - off[doc]), std::max<long long>(1, sample_tokens));
    std::vector<int32_t> ids(static_cast<size_t>(n));
    r->read(int64_t(off[doc]), n, ids.data());
    std::printf("\nsample: %s document %zu, first %lld of %llu tokens\n", fs::path(r->path()).filename().c_str(), doc,
                (long long)n, (unsigned long long)(off[doc + 1] - off[doc]));
    const std::string tok_path = (fs::path(dir) / m.tokenizer_file).string();
    if (m.tokenizer_type == "sentencepiece" && fs::exists(tok_path)) {
      const auto tok = data::Tokenizer::load(tok_path);
      std::printf("----------------------------------------------------------------\n%s\n", printable_sample(tok.decode(ids)).c_str());
      std::printf("----------------------------------------------------------------\npieces:");
      for (int64_t k = 0; k < std::min<int64_t>(n, 24); ++k)
        std::printf(" [%s]", printable_sample(tok.piece(ids[size_t(k)]), true).c_str());
      std::printf("\n");
    } else {
      std::printf("ids:");
      for (int64_t k = 0; k < std::min<int64_t>(n, 64); ++k) std::printf(" %d", ids[size_t(k)]);
      std::printf("\n");
    }
  }

  // Histogram of document lengths (tokens including EOS), powers of two.
  if (!lengths.empty()) {
    std::sort(lengths.begin(), lengths.end());
    double mean = 0;
    for (auto v : lengths) mean += double(v);
    mean /= double(lengths.size());
    std::printf("\ntrain document lengths (tokens incl. EOS): %zu documents, mean %.0f, median %llu, p99 %llu, max %llu\n",
                lengths.size(), mean, (unsigned long long)lengths[lengths.size() / 2],
                (unsigned long long)lengths[std::min(lengths.size() - 1, lengths.size() * 99 / 100)],
                (unsigned long long)lengths.back());
    std::map<int, uint64_t> buckets;
    for (auto v : lengths) buckets[int(std::floor(std::log2(double(v))))] += 1;
    uint64_t peak = 0;
    for (const auto& [b, c] : buckets) peak = std::max(peak, c);
    for (const auto& [b, c] : buckets) {
      const int bar = int(std::lround(50.0 * double(c) / double(peak)));
      std::printf("  [%8llu, %8llu) %8llu %5.1f%% %s\n", 1ull << b, 1ull << (b + 1), (unsigned long long)c,
                  100.0 * double(c) / double(lengths.size()), std::string(size_t(bar), '#').c_str());
    }
  }
  return 0;
}

int data_bench(int argc, char** argv) {
  Args args(argc, argv);
  const long long seq_len = args.get_int("seq-len", 2048);
  const long long batch = args.get_int("batch", 8);
  const double seconds = args.get_double("seconds", 3.0);
  const long long threads = args.get_int("threads", 0);
  const double text_mb = args.get_double("text-mb", 16.0);
  const long long prefetch = args.get_int("prefetch", 4);
  args.check_unused();
  DFSSM_CHECK(args.positionals().size() == 1, "usage: dfssm data bench <dataset-dir> [--seq-len N] [--batch B]");
  const std::string dir = args.positionals()[0];
  const data::Manifest m = data::read_manifest(dir);
  const int nthreads = threads > 0 ? int(threads) : data::DataConfig().threads();

  // ---- Tokenization: decode training documents back to text, then time encoding it. ----
  const std::string tok_path = (fs::path(dir) / m.tokenizer_file).string();
  if (m.tokenizer_type == "sentencepiece" && fs::exists(tok_path)) {
    const auto tok = data::Tokenizer::load(tok_path);
    const auto readers = data::open_split(dir, m, "train");
    std::vector<std::string> texts;
    uint64_t bytes = 0;
    for (const auto& r : readers) {
      const auto off = r->doc_offsets();
      for (size_t d = 0; d + 1 < off.size() && double(bytes) < text_mb * 1e6; ++d) {
        std::vector<int32_t> ids(off[d + 1] - off[d]);
        r->read(int64_t(off[d]), int64_t(ids.size()), ids.data());
        ids.pop_back();  // EOS
        texts.push_back(tok.decode(ids));
        bytes += texts.back().size();
      }
    }
    std::vector<std::string_view> views(texts.begin(), texts.end());
    std::printf("tokenization: %s of decoded training text, %zu documents\n", data::human_bytes(bytes).c_str(),
                texts.size());
    std::vector<int> counts = {1};
    if (nthreads > 1) counts.push_back(nthreads);
    for (int t : counts) {
      const auto t0 = Clock::now();
      const auto enc = data::encode_parallel(tok, views, t);
      const double dt = since(t0);
      uint64_t ntok = 0;
      for (const auto& e : enc) ntok += e.size();
      std::printf("  %2d thread%s: %7.2f MB/s  %10.0f tokens/s  (%.2f s, %.2f bytes/token)\n", t, t == 1 ? " " : "s",
                  double(bytes) / 1e6 / dt, double(ntok) / dt, dt, double(bytes) / double(ntok));
    }
  } else {
    std::printf("tokenization: skipped (the dataset's tokenizer is external)\n");
  }

  // ---- Loader: random windows from the HDF5 shards. ----
  std::printf("loader: split train, seq_len %lld, batch %lld, shuffled windows\n", seq_len, batch);
  for (long long pf : std::vector<long long>{0, prefetch}) {
    data::LoaderOptions o;
    o.dir = dir;
    o.seq_len = seq_len;
    o.batch_size = batch;
    o.seed = 1;
    o.prefetch = int(pf);
    const auto t_open = Clock::now();
    data::TokenLoader loader(o);
    const double open_s = since(t_open);
    std::vector<int32_t> staging(size_t(batch * (seq_len + 1)));  // stands in for the pinned tensor
    data::Batch b;
    uint64_t ids = 0, batches = 0;
    const auto t0 = Clock::now();
    while (since(t0) < seconds) {
      loader.next(&b);
      std::memcpy(staging.data(), b.tokens.data(), b.tokens.size() * sizeof(int32_t));
      ids += uint64_t(b.rows) * uint64_t(seq_len);
      ++batches;
    }
    const double dt = since(t0);
    std::printf("  prefetch %lld: %8.2f M tokens/s  (%.0f batches/s, %llu batches; windows %lld, open %.3f s)\n", pf,
                double(ids) / 1e6 / dt, double(batches) / dt, (unsigned long long)batches,
                (long long)loader.num_windows(), open_s);
  }
  std::printf("(tokens = rows x seq_len, the training targets; each row also carries its one extra id)\n");
  return 0;
}

}  // namespace

int cmd_data(int argc, char** argv) {
  DFSSM_CHECK(argc >= 1, "usage: dfssm data prepare|inspect|bench ... (dfssm data --help)");
  const std::string sub = argv[0];
  if (sub == "prepare") return data_prepare(argc - 1, argv + 1);
  if (sub == "inspect") return data_inspect(argc - 1, argv + 1);
  if (sub == "bench") return data_bench(argc - 1, argv + 1);
  throw Error(str("unknown data subcommand '", sub, "'; use prepare, inspect or bench (dfssm data --help)"));
}

}  // namespace dfssm::cli
