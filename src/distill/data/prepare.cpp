#include "distill/data/prepare.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "core/error.h"
#include "core/safetensors.h"
#include "distill/data/corpus.h"
#include "distill/data/sha256.h"
#include "distill/data/shard.h"
#include "distill/data/tokenizer.h"
#include "distill/data/util.h"

namespace fs = std::filesystem;

namespace dfssm::data {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
std::string fixed(double v, int digits = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

constexpr uint64_t kSplitSalt = 0x5EED5A17ull;
constexpr uint64_t kSampleSalt = 0x5A3B1E00ull;
constexpr size_t kBlockBytes = 16u << 20;  // corpus read, tokenized in parallel, then written, per block

// Files this run created; removed unless commit() is called (an error leaves nothing behind).
class CreatedFiles {
 public:
  ~CreatedFiles() {
    if (committed_) return;
    std::error_code ec;
    for (const auto& p : paths_) fs::remove(p, ec);
  }
  void add(const std::string& p) { paths_.push_back(p); }
  void commit() { committed_ = true; }

 private:
  std::vector<std::string> paths_;
  bool committed_ = false;
};

// Writes one split ("train" / "val") as a sequence of shards.
class SplitWriter {
 public:
  SplitWriter(std::string dir, std::string split, ShardMeta base, ShardWriteOptions opts, int64_t shard_tokens,
              const DataConfig& cfg, CreatedFiles* created)
      : dir_(std::move(dir)),
        split_(std::move(split)),
        base_(std::move(base)),
        opts_(opts),
        shard_tokens_(shard_tokens),
        cfg_(cfg),
        created_(created) {
    base_.split = split_;
  }

  void begin_doc(size_t source, int64_t bos_id) {
    if (!cur_) {
      char name_buf[64];
      std::snprintf(name_buf, sizeof name_buf, "%s-%05zu.h5", split_.c_str(), entry.shards.size());
      const std::string name = name_buf;
      cur_ = std::make_unique<ShardWriter>((fs::path(dir_) / name).string(), base_, opts_);
      cur_name_ = name;
      cur_sources_.clear();
    }
    source_ = source;
    doc_start_ = cur_->tokens();
    if (bos_id >= 0) {
      const int32_t b = int32_t(bos_id);
      cur_->append(&b, 1);
    }
  }
  void append(const std::vector<int32_t>& ids) { cur_->append(ids.data(), ids.size()); }
  void end_doc(int64_t eos_id) {
    const int32_t e = int32_t(eos_id);
    cur_->append(&e, 1);
    cur_->end_document();
    auto& s = cur_sources_[source_];
    s.first += 1;
    s.second += cur_->tokens() - doc_start_;
    if (cur_->tokens() >= shard_tokens_) close_shard();
  }
  void finish() {
    if (cur_) close_shard();
  }

  SplitEntry entry;

 private:
  void close_shard() {
    nlohmann::json srcs = nlohmann::json::array();
    for (const auto& [i, dt] : cur_sources_)
      srcs.push_back({{"source", i}, {"spec", cfg_.sources[i].describe()}, {"documents", dt.first}, {"tokens", dt.second}});
    ShardEntry e;
    e.file = cur_name_;
    e.tokens = cur_->tokens();
    e.documents = cur_->documents();
    const std::string path = cur_->path();
    created_->add(path);
    cur_->finish(srcs.dump());
    cur_.reset();
    e.bytes = fs::file_size(path);
    e.sha256 = sha256_file(path);
    entry.tokens += e.tokens;
    entry.documents += e.documents;
    entry.shards.push_back(std::move(e));
  }

  std::string dir_, split_;
  ShardMeta base_;
  ShardWriteOptions opts_;
  int64_t shard_tokens_;
  const DataConfig& cfg_;
  CreatedFiles* created_;
  std::unique_ptr<ShardWriter> cur_;
  std::string cur_name_;
  std::map<size_t, std::pair<int64_t, int64_t>> cur_sources_;  // source -> (documents, tokens)
  size_t source_ = 0;
  int64_t doc_start_ = 0;
};

void prepare_output_dir(const DataConfig& cfg) {
  const fs::path out(cfg.output);
  std::error_code ec;
  if (!fs::exists(out, ec)) {
    fs::create_directories(out, ec);
    DFSSM_CHECK(!ec, "cannot create output directory '", cfg.output, "': ", ec.message());
    return;
  }
  DFSSM_CHECK(fs::is_directory(out, ec), "output '", cfg.output, "' exists and is not a directory");
  if (fs::is_empty(out, ec)) return;
  DFSSM_CHECK(cfg.overwrite, "output directory '", cfg.output, "' already exists and is not empty; pass overwrite=true ",
              "to replace the dataset in it, or choose another output=");
  // Manifest first: from here on the directory is "incomplete" until the new manifest lands.
  fs::remove(out / "manifest.json", ec);
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(out, ec)) entries.push_back(e.path());
  for (const auto& e : entries) {
    const std::string n = e.filename().string();
    const bool ours = ((n.rfind("train-", 0) == 0 || n.rfind("val-", 0) == 0) &&
                       (n.size() > 3 && (n.compare(n.size() - 3, 3, ".h5") == 0 || n.find(".h5.tmp") != std::string::npos))) ||
                      n == "tokenizer.model" || n.rfind("tokenizer.model.", 0) == 0 || n.rfind("manifest.json.", 0) == 0;
    if (ours) fs::remove(e, ec);
  }
}

bool is_val(const std::string& key, uint64_t doc, uint64_t seed, double fraction) {
  if (fraction <= 0) return false;
  const uint64_t h = hash_combine(hash_combine(seed ^ kSplitSalt, fnv1a64(key)), doc);
  return unit_interval(h) < fraction;
}

}  // namespace

Manifest prepare_data(const DataConfig& cfg, const PrepareLog& log) {
  validate(cfg);
  const auto t_start = Clock::now();
  auto info = [&](const std::string& s) {
    if (log.info) log.info(s);
  };
  const int threads = cfg.threads();

  // ---- Sources ----
  std::vector<std::string> resolved;
  std::vector<CorpusFile> files = expand_sources(cfg, &resolved);
  uint64_t total_bytes = 0, text_bytes_on_disk = 0;
  bool has_text = false;
  for (const auto& f : files) {
    total_bytes += f.bytes;
    if (f.format != SourceFormat::Tokens) {
      has_text = true;
      text_bytes_on_disk += f.bytes;
    }
  }
  info(str("sources: ", files.size(), " files (", human_bytes(total_bytes), ") from ", cfg.sources.size(),
           " source(s)"));
  prepare_output_dir(cfg);
  CreatedFiles created;
  const fs::path out(cfg.output);

  // ---- Tokenizer ----
  const TokenizerSpec& ts = cfg.tokenizer;
  Tokenizer tok = [&] {
    if (!ts.model.empty()) {
      Tokenizer t = Tokenizer::load(ts.model);
      const std::string dst = (out / "tokenizer.model").string();
      created.add(dst);
      write_file_atomic(dst, t.model_bytes());
      info(str("tokenizer: ", ts.model, " (vocab ", t.info().vocab_size, ")"));
      return t;
    }
    if (ts.type == "none") {
      DFSSM_CHECK(!has_text, "tokenizer.type=none describes pre-tokenized data only, but the sources include text; ",
                  "set tokenizer.type=bpe|unigram to train a tokenizer, or tokenizer.model=<file.model>");
      return Tokenizer::external(ts.vocab_size, ts.eos_id, ts.bos_id, ts.file);
    }
    DFSSM_CHECK(has_text, "all sources are pre-tokenized, so there is no text to train a tokenizer on; set ",
                "tokenizer.type=none (with tokenizer.vocab_size and tokenizer.eos_id) or tokenizer.model=<file.model>");
    const auto t0 = Clock::now();
    const double p = text_bytes_on_disk == 0 ? 1.0 : std::min(1.0, double(ts.sample_bytes) / double(text_bytes_on_disk));
    std::vector<std::string> sentences;
    uint64_t sampled = 0;
    {
      CorpusReader sample_reader(cfg, files, 0, -1, nullptr, /*text_only=*/true);
      Unit u;
      while (sample_reader.next(&u)) {
        const uint64_t h = hash_combine(hash_combine(cfg.seed ^ kSampleSalt, fnv1a64(files[u.file].key)), u.doc);
        uint64_t k = 0;
        for (std::string_view c : split_chunks(u.text, size_t(ts.max_sentence_bytes))) {
          if (p >= 1.0 || unit_interval(hash_combine(h, k++)) < p) {
            sentences.emplace_back(c);
            sampled += c.size();
          }
        }
      }
    }
    DFSSM_CHECK(!sentences.empty(), "the corpus is empty: ", files.size(),
                " files matched but none holds any text (empty files or skipped ones); check the sources");
    info(str("tokenizer: training SentencePiece ", ts.type, " vocab ", ts.vocab_size, " on ", human_bytes(sampled),
             " sampled text (", sentences.size(), " chunks, ", threads, " threads)"));
    std::string model = train_sentencepiece(sentences, ts, threads, cfg.seed);
    sentences.clear();
    sentences.shrink_to_fit();
    const std::string dst = (out / "tokenizer.model").string();
    created.add(dst);
    write_file_atomic(dst, model);
    Tokenizer t = Tokenizer::from_model_bytes(std::move(model), dst);
    info(str("tokenizer: trained in ", fixed(seconds_since(t0)), " s -> ", dst));
    return t;
  }();
  const double t_tokenizer = seconds_since(t_start);
  const TokenizerInfo& ti = tok.info();

  // ---- Tokenize and write shards ----
  ShardMeta base;
  base.vocab_size = ti.vocab_size;
  base.dtype = dtype_for_vocab(ti.vocab_size);
  base.tokenizer_sha256 = ti.sha256;
  base.eos_id = ti.eos_id;
  base.bos_id = ti.bos_id;
  ShardWriteOptions wo;
  wo.chunk_tokens = cfg.chunk_tokens;
  wo.compression = cfg.compression;
  wo.checksum = cfg.checksum;
  SplitWriter train(cfg.output, "train", base, wo, cfg.shard_tokens, cfg, &created);
  SplitWriter val(cfg.output, "val", base, wo, cfg.shard_tokens, cfg, &created);
  DFSSM_CHECK(!cfg.add_bos || ti.bos_id >= 0, "add_bos=true but the tokenizer has no BOS id");

  uint64_t warnings = 0;
  auto warn = [&](const std::string& s) {
    if (++warnings <= 20 && log.warn) log.warn(s);
  };
  CorpusReader reader(cfg, files, ti.vocab_size, ti.eos_id, warn);
  std::vector<uint64_t> file_tokens(files.size(), 0);
  std::vector<Unit> block;
  size_t block_bytes = 0;
  SplitWriter* w = &train;
  double encode_seconds = 0;
  uint64_t encoded_bytes = 0, encoded_tokens = 0;
  const auto t_tok0 = Clock::now();
  auto last_report = t_tok0;
  auto process = [&] {
    std::vector<std::string_view> texts;
    for (const Unit& u : block)
      if (u.kind == Unit::kText) texts.push_back(u.text);
    const auto t0 = Clock::now();
    const auto enc = encode_parallel(tok, texts, threads);
    encode_seconds += seconds_since(t0);
    size_t e = 0;
    for (const Unit& u : block) {
      const std::vector<int32_t>& ids = u.kind == Unit::kText ? enc[e++] : u.tokens;
      if (u.kind == Unit::kText) {
        encoded_bytes += u.text.size();
        encoded_tokens += ids.size();
      }
      const CorpusFile& f = files[u.file];
      if (u.begin) {
        w = is_val(f.key, u.doc, cfg.seed, cfg.val_fraction) ? &val : &train;
        const bool bos = cfg.add_bos && u.kind == Unit::kText;
        w->begin_doc(f.source, bos ? ti.bos_id : -1);
        file_tokens[u.file] += bos ? 1 : 0;
      }
      w->append(ids);
      file_tokens[u.file] += ids.size();
      if (u.end) {
        w->end_doc(ti.eos_id);
        file_tokens[u.file] += 1;
      }
    }
    block.clear();
    block_bytes = 0;
    if (seconds_since(last_report) > 10) {
      last_report = Clock::now();
      info(str("  ", human_bytes(encoded_bytes), " tokenized, ", with_commas(uint64_t(train.entry.tokens + val.entry.tokens)),
               " tokens in finished shards, ", int(seconds_since(t_tok0)), " s"));
    }
  };
  Unit u;
  while (reader.next(&u)) {
    block_bytes += u.text.size() + u.tokens.size() * sizeof(int32_t) + 64;
    block.push_back(std::move(u));
    u = Unit();
    if (block_bytes >= kBlockBytes) process();
  }
  process();
  train.finish();
  val.finish();
  const double t_tokenize = seconds_since(t_tok0);

  // ---- Checks on the result ----
  const auto& stats = reader.stats();
  uint64_t docs = 0, skipped_utf8 = 0, skipped_empty = 0, skipped_field = 0;
  for (const auto& s : stats) {
    docs += s.documents;
    skipped_utf8 += s.skipped_invalid_utf8;
    skipped_empty += s.skipped_empty;
    skipped_field += s.skipped_missing_field;
  }
  if (warnings > 20 && log.warn) log.warn(str("... and ", warnings - 20, " more skipped inputs (see manifest.json sources)"));
  DFSSM_CHECK(docs > 0, "the corpus is empty: ", files.size(), " files matched but none holds a document (", skipped_empty,
              " empty, ", skipped_utf8, " skipped as not UTF-8, ", skipped_field,
              " JSONL lines without the field); check the sources");
  DFSSM_CHECK(train.entry.documents > 0, "all ", docs, " documents went to the validation split (val_fraction=",
              cfg.val_fraction, "); lower val_fraction or add documents");
  DFSSM_CHECK(cfg.val_fraction <= 0 || val.entry.documents > 0, "the validation split is empty: none of the ", docs,
              " documents was drawn with val_fraction=", cfg.val_fraction,
              "; raise val_fraction, add documents, or set val_fraction=0");

  // ---- Manifest ----
  Manifest m;
  m.created_by = "dfssm data prepare";
  m.vocab_size = ti.vocab_size;
  m.dtype = dtype_name(base.dtype);
  m.eos_id = ti.eos_id;
  m.bos_id = ti.bos_id;
  m.add_bos = cfg.add_bos;
  m.tokenizer_type = ti.type;
  m.tokenizer_file = ti.type == "sentencepiece" ? "tokenizer.model" : "";
  m.tokenizer_sha256 = ti.sha256;
  m.val_fraction = cfg.val_fraction;
  m.seed = cfg.seed;
  m.splits["train"] = train.entry;
  m.splits["val"] = val.entry;
  m.sources = nlohmann::json::array();
  for (size_t i = 0; i < cfg.sources.size(); ++i) {
    uint64_t nf = 0, nd = 0, nt = 0, nb = 0, su = 0, se = 0, sf = 0;
    std::map<std::string, uint64_t> formats;
    for (size_t k = 0; k < files.size(); ++k) {
      if (files[k].source != i) continue;
      ++nf;
      nd += stats[k].documents;
      nt += file_tokens[k];
      nb += files[k].bytes;
      su += stats[k].skipped_invalid_utf8;
      se += stats[k].skipped_empty;
      sf += stats[k].skipped_missing_field;
      formats[format_name(files[k].format)] += 1;
    }
    m.sources.push_back({{"spec", cfg.sources[i].describe()},
                         {"resolved", resolved[i]},
                         {"formats", formats},
                         {"files", nf},
                         {"bytes", nb},
                         {"documents", nd},
                         {"tokens", nt},
                         {"skipped", {{"invalid_utf8", su}, {"empty", se}, {"missing_field", sf}}}});
  }
  m.config = cfg.to_json();
  const double total = seconds_since(t_start);
  m.stats = {{"threads", threads},
             {"seconds_total", total},
             {"seconds_tokenizer", t_tokenizer},
             {"seconds_tokenize_and_write", t_tokenize},
             {"text_bytes_tokenized", encoded_bytes},
             {"text_tokens", encoded_tokens},
             {"tokenize_mb_per_s", encode_seconds > 0 ? double(encoded_bytes) / 1e6 / encode_seconds : 0.0},
             {"bytes_per_token", encoded_tokens > 0 ? double(encoded_bytes) / double(encoded_tokens) : 0.0}};
  write_manifest(cfg.output, m);
  created.commit();
  info(str("done in ", fixed(total), " s: train ", with_commas(uint64_t(train.entry.tokens)), " tokens / ",
           train.entry.documents, " documents in ", train.entry.shards.size(), " shard(s); val ",
           with_commas(uint64_t(val.entry.tokens)), " tokens / ", val.entry.documents, " documents -> ",
           (out / "manifest.json").string()));
  if (encode_seconds > 0)
    info(str("tokenization: ", human_bytes(encoded_bytes), " in ", fixed(encode_seconds), " s = ",
             fixed(double(encoded_bytes) / 1e6 / encode_seconds, 2), " MB/s on ", threads, " threads"));
  return m;
}

}  // namespace dfssm::data
