#include "core/torch_zip.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <optional>

#include "core/error.h"
#include "core/io_util.h"

namespace dfssm {

namespace {

// Products and sums of sizes/strides are done in 128 bits and capped well below 2^63, so a
// hostile pickle cannot wrap them around.
using u128 = unsigned __int128;
constexpr u128 kMaxElems = u128(1) << 62;
constexpr size_t kMaxRank = 64;

// Number of elements, or nullopt when it exceeds kMaxElems.
std::optional<int64_t> checked_numel(const std::vector<int64_t>& shape) {
  u128 n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    n *= u128(uint64_t(d));
    if (n > kMaxElems) return std::nullopt;
  }
  return int64_t(n);
}

// Bytes of storage a tensor touches (0 for an empty tensor), or nullopt on overflow.
std::optional<uint64_t> needed_bytes(const std::vector<int64_t>& shape, const std::vector<int64_t>& stride,
                                     int64_t offset, size_t elem_size) {
  if (shape.size() != stride.size() || offset < 0) return std::nullopt;
  const auto n = checked_numel(shape);
  if (!n) return std::nullopt;
  if (*n == 0) return 0;
  u128 last = u128(uint64_t(offset));
  for (size_t i = 0; i < shape.size(); ++i) {
    if (stride[i] < 0) return std::nullopt;
    last += u128(uint64_t(shape[i] - 1)) * u128(uint64_t(stride[i]));  // < 2^126 per term
    if (last > kMaxElems) return std::nullopt;
  }
  return uint64_t((last + 1) * elem_size);
}

}  // namespace

int64_t TorchZipTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool TorchZipTensor::is_contiguous() const {
  int64_t expect = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && stride[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

namespace {

// ---- Bounds-checked little-endian reads over the mapped file -------------------------------
struct Bytes {
  const uint8_t* p;
  uint64_t n;
  const std::string* path;
  void need(uint64_t off, uint64_t len, const char* what) const {
    DFSSM_CHECK(off <= n && len <= n - off, *path, ": ", what, " at offset ", off, " (", len,
                " bytes) runs past the end of the file (", n, " bytes; truncated or not a torch.save zip?)");
  }
  uint64_t le(uint64_t off, int len, const char* what) const {
    need(off, uint64_t(len), what);
    uint64_t v = 0;
    for (int i = len - 1; i >= 0; --i) v = (v << 8) | p[off + uint64_t(i)];
    return v;
  }
};

struct ZipEntry {
  uint64_t data_offset;
  uint64_t size;
};

constexpr uint32_t kSigLocal = 0x04034b50u, kSigCentral = 0x02014b50u, kSigEnd = 0x06054b50u,
                   kSigEnd64 = 0x06064b50u, kSigLocator64 = 0x07064b50u;

// Parses the zip central directory into name -> (data offset, size). Only STORED entries are
// accepted (torch.save never compresses); data offsets come from the local headers, whose extra
// fields (torch pads them to align storages) differ from the central ones.
std::map<std::string, ZipEntry> read_zip(const Bytes& b) {
  const std::string& path = *b.path;
  DFSSM_CHECK(b.n >= 22, path, ": ", b.n, " bytes is too short for a zip archive (truncated?)");
  // End of central directory record: the last signature in the final 22 + 65535 bytes whose
  // comment fits in the file.
  uint64_t eocd = UINT64_MAX;
  const uint64_t last = b.n - 22;
  const uint64_t lo = last > 65535 ? last - 65535 : 0;
  for (uint64_t i = last + 1; i-- > lo;) {
    if (b.le(i, 4, "zip end record") == kSigEnd && i + 22 + b.le(i + 20, 2, "zip end record") <= b.n) {
      eocd = i;
      break;
    }
  }
  DFSSM_CHECK(eocd != UINT64_MAX, path,
              ": not a zip archive (no end-of-central-directory record). Either the file is truncated, or it "
              "is not a torch.save file, or it is a legacy (pre-1.6, non-zip) torch.save file, which is not "
              "supported: re-save it with a current PyTorch");
  uint64_t count = b.le(eocd + 10, 2, "zip end record");
  uint64_t cd_size = b.le(eocd + 12, 4, "zip end record");
  uint64_t cd_off = b.le(eocd + 16, 4, "zip end record");
  // PyTorch always writes a ZIP64 end record + locator; other writers only when needed.
  if (eocd >= 20 && b.le(eocd - 20, 4, "zip64 locator") == kSigLocator64) {
    const uint64_t e64 = b.le(eocd - 20 + 8, 8, "zip64 locator");
    DFSSM_CHECK(e64 < eocd - 20 && b.le(e64, 4, "zip64 end record") == kSigEnd64, path,
                ": corrupt zip64 end-of-central-directory record (offset ", e64, ")");
    count = b.le(e64 + 32, 8, "zip64 end record");
    cd_size = b.le(e64 + 40, 8, "zip64 end record");
    cd_off = b.le(e64 + 48, 8, "zip64 end record");
  } else {
    DFSSM_CHECK(count != 0xffff && cd_size != 0xffffffffu && cd_off != 0xffffffffu, path,
                ": zip archive needs ZIP64 records but has no zip64 locator (truncated or corrupt)");
  }
  b.need(cd_off, cd_size, "zip central directory");
  DFSSM_CHECK(count <= cd_size / 46, path, ": zip central directory claims ", count, " entries in ", cd_size,
              " bytes (corrupt)");
  const uint64_t cd_end = cd_off + cd_size;
  std::map<std::string, ZipEntry> entries;
  uint64_t pos = cd_off;
  for (uint64_t k = 0; k < count; ++k) {
    DFSSM_CHECK(pos + 46 <= cd_end && b.le(pos, 4, "zip directory entry") == kSigCentral, path,
                ": corrupt zip central directory (entry ", k, " at offset ", pos, ")");
    const uint64_t flags = b.le(pos + 8, 2, "zip directory entry");
    const uint64_t method = b.le(pos + 10, 2, "zip directory entry");
    uint64_t csize = b.le(pos + 20, 4, "zip directory entry");
    uint64_t usize = b.le(pos + 24, 4, "zip directory entry");
    const uint64_t nlen = b.le(pos + 28, 2, "zip directory entry");
    const uint64_t xlen = b.le(pos + 30, 2, "zip directory entry");
    const uint64_t clen = b.le(pos + 32, 2, "zip directory entry");
    uint64_t local = b.le(pos + 42, 4, "zip directory entry");
    const uint64_t next = pos + 46 + nlen + xlen + clen;
    DFSSM_CHECK(next <= cd_end, path, ": corrupt zip central directory (entry ", k, " runs past its end)");
    const std::string name(reinterpret_cast<const char*>(b.p + pos + 46), nlen);
    // ZIP64 extended information: 8-byte values for exactly the fields saturated above, in
    // the order uncompressed size, compressed size, local header offset.
    bool need_u = usize == 0xffffffffu, need_c = csize == 0xffffffffu, need_l = local == 0xffffffffu;
    const uint64_t xend = pos + 46 + nlen + xlen;
    for (uint64_t x = pos + 46 + nlen; x + 4 <= xend;) {
      const uint64_t id = b.le(x, 2, "zip extra field"), len = b.le(x + 2, 2, "zip extra field");
      DFSSM_CHECK(x + 4 + len <= xend, path, ": corrupt zip extra field in entry '", name, "'");
      if (id == 1) {
        uint64_t q = x + 4;
        auto take8 = [&](uint64_t* v) {
          DFSSM_CHECK(q + 8 <= x + 4 + len, path, ": zip64 extra field of '", name, "' is too short");
          *v = b.le(q, 8, "zip64 extra field");
          q += 8;
        };
        if (need_u) take8(&usize), need_u = false;
        if (need_c) take8(&csize), need_c = false;
        if (need_l) take8(&local), need_l = false;
      }
      x += 4 + len;
    }
    DFSSM_CHECK(!need_u && !need_c && !need_l, path, ": zip entry '", name,
                "' needs a zip64 extra field but has none (corrupt)");
    DFSSM_CHECK((flags & 1) == 0, path, ": zip entry '", name, "' is encrypted; that is not supported");
    DFSSM_CHECK(method == 0, path, ": zip entry '", name, "' is compressed (method ", method,
                "); torch.save archives store entries uncompressed, re-save the file with torch.save");
    DFSSM_CHECK(csize == usize, path, ": zip entry '", name, "' is stored but its sizes differ (", csize, " vs ",
                usize, "; corrupt)");
    DFSSM_CHECK(b.le(local, 4, "zip local header") == kSigLocal, path, ": corrupt zip local header for '", name,
                "' at offset ", local);
    DFSSM_CHECK(b.le(local + 8, 2, "zip local header") == 0, path, ": zip entry '", name,
                "' is compressed; torch.save archives store entries uncompressed");
    const uint64_t lnlen = b.le(local + 26, 2, "zip local header");
    const uint64_t lxlen = b.le(local + 28, 2, "zip local header");
    b.need(local + 30, lnlen, "zip local header name");
    DFSSM_CHECK(lnlen == nlen && std::memcmp(b.p + local + 30, name.data(), nlen) == 0, path,
                ": zip local header at offset ", local, " does not match directory entry '", name, "' (corrupt)");
    const uint64_t data = local + 30 + lnlen + lxlen;
    b.need(data, usize, "zip entry data");
    DFSSM_CHECK(entries.emplace(name, ZipEntry{data, usize}).second, path, ": zip entry '", name,
                "' appears twice");
    pos = next;
  }
  return entries;
}

// ---- The pickle subset torch.save emits -----------------------------------------------------
// Values live in an arena owned by the unpickler and refer to each other by raw pointer, so
// cyclic or deeply nested (hostile) pickles neither leak nor recurse on destruction.
std::optional<DType> dtype_from_torch(const std::string& name) {
  static const std::map<std::string, DType> kNames = {
      {"float64", DType::F64}, {"double", DType::F64}, {"float32", DType::F32},       {"float", DType::F32},
      {"float16", DType::F16}, {"half", DType::F16},   {"bfloat16", DType::BF16},     {"int64", DType::I64},
      {"long", DType::I64},    {"int32", DType::I32},  {"int", DType::I32},           {"int16", DType::I16},
      {"short", DType::I16},   {"int8", DType::I8},    {"uint8", DType::U8},          {"bool", DType::BOOL},
      {"uint16", DType::U16},  {"uint32", DType::U32}, {"uint64", DType::U64},        {"float8_e4m3fn", DType::F8_E4M3},
      {"float8_e5m2", DType::F8_E5M2}};
  auto it = kNames.find(name);
  if (it == kNames.end()) return std::nullopt;
  return it->second;
}

// Legacy typed-storage classes: "torch FloatStorage" -> F32 (also "torch.cuda FloatStorage").
std::optional<DType> dtype_from_storage_type(const std::string& global) {
  static const std::map<std::string, DType> kTypes = {
      {"FloatStorage", DType::F32}, {"DoubleStorage", DType::F64}, {"HalfStorage", DType::F16},
      {"BFloat16Storage", DType::BF16}, {"LongStorage", DType::I64}, {"IntStorage", DType::I32},
      {"ShortStorage", DType::I16}, {"CharStorage", DType::I8},    {"ByteStorage", DType::U8},
      {"BoolStorage", DType::BOOL}};
  for (const char* mod : {"torch ", "torch.cuda "}) {
    const size_t m = std::strlen(mod);
    if (global.compare(0, m, mod) == 0) {
      auto it = kTypes.find(global.substr(m));
      if (it != kTypes.end()) return it->second;
    }
  }
  return std::nullopt;
}

std::string dotted(const std::string& global) {  // "torch._utils _rebuild_x" -> "torch._utils._rebuild_x"
  std::string s = global;
  const size_t sp = s.find(' ');
  if (sp != std::string::npos) s[sp] = '.';
  return s;
}

struct StorageRef {
  std::string key;        // the persistent id's key: the zip entry is <dir>/data/<key>
  std::string type;       // the storage-type global, e.g. "torch FloatStorage"
  bool untyped = false;   // torch.storage.UntypedStorage (bytes; dtype comes from the tensor)
  std::optional<DType> dtype;
  int64_t numel = -1;     // elements (bytes when untyped), -1 when not given
};

struct TensorRef {
  const StorageRef* storage = nullptr;
  std::optional<DType> dtype;
  int64_t offset = 0;
  std::vector<int64_t> shape, stride;
  std::string error;  // why this tensor cannot be used (reported only if it is a state-dict entry)
};

struct PVal {
  enum Kind : uint8_t { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Storage, Tensor, Object };
  Kind kind = None;
  int64_t i = 0;
  double f = 0;
  std::string s;  // Str / Bytes: contents; Global: "module name"; Object: the global that built it
  std::vector<PVal*> items;                     // Tuple / List
  std::vector<std::pair<PVal*, PVal*>> dict;    // Dict
  std::unique_ptr<StorageRef> storage;          // Storage
  std::unique_ptr<TensorRef> tensor;            // Tensor
};

const char* kind_name(PVal::Kind k) {
  static const char* kNames[] = {"None", "bool", "int", "float", "str", "bytes", "tuple",
                                 "list", "dict", "global", "storage", "tensor", "object"};
  return kNames[k];
}

class Unpickler {
 public:
  Unpickler(const uint8_t* p, uint64_t n, const std::string& path) : p_(p), n_(n), path_(path) {}

  PVal* run() {
    while (true) {
      const uint64_t at = pos_;
      const uint8_t op = u8();
      switch (op) {
        case 0x80: {  // PROTO
          const uint8_t v = u8();
          DFSSM_CHECK(v <= 5, path_, ": data.pkl uses pickle protocol ", int(v), ", which is not supported");
          break;
        }
        case 0x95: take(8); break;  // FRAME: framing is only a read-ahead hint
        case '.': {                 // STOP
          PVal* v = pop("STOP", at);
          return v;
        }
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case '0':                                           // POP
          if (stack_.size() > base()) {
            stack_.pop_back();
          } else {
            pop_mark(at);
          }
          break;
        case '1': pop_mark(at); break;                 // POP_MARK
        case '2': stack_.push_back(top(at)); break;    // DUP
        case '}': push(PVal::Dict); break;             // EMPTY_DICT
        case ']': push(PVal::List); break;             // EMPTY_LIST
        case ')': push(PVal::Tuple); break;            // EMPTY_TUPLE
        case 'd': {                                    // DICT
          auto items = pop_mark(at);
          DFSSM_CHECK(items.size() % 2 == 0, path_, ": corrupt pickle (odd DICT at offset ", at, " of data.pkl)");
          PVal* d = push(PVal::Dict);
          for (size_t i = 0; i < items.size(); i += 2) d->dict.emplace_back(items[i], items[i + 1]);
          break;
        }
        case 'l': case 't': {  // LIST / TUPLE
          auto items = pop_mark(at);
          push(op == 'l' ? PVal::List : PVal::Tuple)->items = std::move(items);
          break;
        }
        case 0x85: case 0x86: case 0x87: {                              // TUPLE1..3
          const size_t k = size_t(op - 0x84);
          DFSSM_CHECK(stack_.size() >= base() + k, path_, ": corrupt pickle (stack underflow in TUPLE", k,
                      " at offset ", at, " of data.pkl)");
          PVal* t = make(PVal::Tuple);
          t->items.assign(stack_.end() - long(k), stack_.end());
          stack_.resize(stack_.size() - k);
          stack_.push_back(t);
          break;
        }
        case 'J': push_int(int32_t(uint32_t(le(4)))); break;  // BININT
        case 'K': push_int(u8()); break;                      // BININT1
        case 'M': push_int(int64_t(le(2))); break;            // BININT2
        case 0x8a: push_long(u8()); break;                    // LONG1
        case 0x8b: push_long(le(4)); break;                   // LONG4
        case 'N': push(PVal::None); break;
        case 0x88: case 0x89: push(PVal::Bool)->i = op == 0x88; break;  // NEWTRUE / NEWFALSE
        case 'G': {                                                     // BINFLOAT, big-endian
          const uint8_t* b = take(8);
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | b[i];
          std::memcpy(&push(PVal::Float)->f, &bits, 8);
          break;
        }
        case 'X': push_str(PVal::Str, le(4)); break;     // BINUNICODE
        case 0x8c: push_str(PVal::Str, u8()); break;     // SHORT_BINUNICODE
        case 0x8d: push_str(PVal::Str, le(8)); break;    // BINUNICODE8
        case 'T': push_str(PVal::Bytes, le(4)); break;   // BINSTRING
        case 'U': push_str(PVal::Bytes, u8()); break;    // SHORT_BINSTRING
        case 'B': push_str(PVal::Bytes, le(4)); break;   // BINBYTES
        case 'C': push_str(PVal::Bytes, u8()); break;    // SHORT_BINBYTES
        case 0x8e: push_str(PVal::Bytes, le(8)); break;  // BINBYTES8
        case 0x96: push_str(PVal::Bytes, le(8)); break;  // BYTEARRAY8
        case 'q': memo_[u8()] = top(at); break;          // BINPUT
        case 'r': memo_[le(4)] = top(at); break;         // LONG_BINPUT
        case 0x94: {                                     // MEMOIZE
          PVal* v = top(at);
          memo_[memo_.size()] = v;
          break;
        }
        case 'h': push_memo(u8(), at); break;  // BINGET
        case 'j': push_memo(le(4), at); break;  // LONG_BINGET
        case 'c': {                              // GLOBAL "module\nname\n"
          std::string mod = line(), name = line();
          push(PVal::Global)->s = mod + " " + name;
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          PVal* name = pop("STACK_GLOBAL", at);
          PVal* mod = pop("STACK_GLOBAL", at);
          DFSSM_CHECK(mod->kind == PVal::Str && name->kind == PVal::Str, path_,
                      ": corrupt pickle (STACK_GLOBAL needs two strings at offset ", at, " of data.pkl)");
          push(PVal::Global)->s = mod->s + " " + name->s;
          break;
        }
        case 'R': {  // REDUCE
          PVal* args = pop("REDUCE", at);
          PVal* fn = pop("REDUCE", at);
          DFSSM_CHECK(args->kind == PVal::Tuple, path_, ": corrupt pickle (REDUCE with a ", kind_name(args->kind),
                      " instead of an argument tuple at offset ", at, " of data.pkl)");
          stack_.push_back(reduce(fn, args));
          break;
        }
        case 0x81: {  // NEWOBJ cls args
          pop("NEWOBJ", at);
          PVal* cls = pop("NEWOBJ", at);
          push(PVal::Object)->s = cls->s;
          break;
        }
        case 0x92: {  // NEWOBJ_EX cls args kwargs
          pop("NEWOBJ_EX", at);
          pop("NEWOBJ_EX", at);
          PVal* cls = pop("NEWOBJ_EX", at);
          push(PVal::Object)->s = cls->s;
          break;
        }
        case 'b':  // BUILD: the state (e.g. an OrderedDict's _metadata) is not needed
          pop("BUILD", at);
          top(at);
          break;
        case 's': {  // SETITEM
          PVal* v = pop("SETITEM", at);
          PVal* k = pop("SETITEM", at);
          PVal* d = top(at);
          expect(d, PVal::Dict, "SETITEM", at);
          if (d->kind == PVal::Dict) d->dict.emplace_back(k, v);
          break;
        }
        case 'u': {  // SETITEMS
          auto items = pop_mark(at);
          DFSSM_CHECK(items.size() % 2 == 0, path_, ": corrupt pickle (odd SETITEMS at offset ", at,
                      " of data.pkl)");
          PVal* d = top(at);
          expect(d, PVal::Dict, "SETITEMS", at);
          if (d->kind == PVal::Dict)
            for (size_t i = 0; i < items.size(); i += 2) d->dict.emplace_back(items[i], items[i + 1]);
          break;
        }
        case 'a': {  // APPEND
          PVal* v = pop("APPEND", at);
          PVal* l = top(at);
          expect(l, PVal::List, "APPEND", at);
          if (l->kind == PVal::List) l->items.push_back(v);
          break;
        }
        case 'e': {  // APPENDS
          auto items = pop_mark(at);
          PVal* l = top(at);
          expect(l, PVal::List, "APPENDS", at);
          if (l->kind == PVal::List) l->items.insert(l->items.end(), items.begin(), items.end());
          break;
        }
        case 0x8f: push(PVal::Object)->s = "builtins set"; break;  // EMPTY_SET
        case 0x90: {                                                // ADDITEMS
          pop_mark(at);
          expect(top(at), PVal::Object, "ADDITEMS", at);
          break;
        }
        case 0x91: {  // FROZENSET
          pop_mark(at);
          push(PVal::Object)->s = "builtins frozenset";
          break;
        }
        case 'Q': stack_.push_back(persistent(pop("BINPERSID", at), at)); break;  // BINPERSID
        default:
          throw Error(str(path_, ": unsupported or corrupt pickle opcode 0x", std::hex, int(op), std::dec,
                          " at offset ", at, " of data.pkl"));
      }
    }
  }

 private:
  // -- reading --
  const uint8_t* take(uint64_t k) {
    DFSSM_CHECK(k <= n_ && pos_ <= n_ - k, path_, ": data.pkl is truncated or corrupt (needs ", k,
                " bytes at offset ", pos_, " of ", n_, ")");
    const uint8_t* r = p_ + pos_;
    pos_ += k;
    return r;
  }
  uint8_t u8() { return *take(1); }
  uint64_t le(int k) {
    const uint8_t* b = take(uint64_t(k));
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; --i) v = (v << 8) | b[i];
    return v;
  }
  std::string line() {
    std::string s;
    for (char c; (c = char(u8())) != '\n';) s += c;
    return s;
  }

  // -- values --
  PVal* make(PVal::Kind k) {
    arena_.push_back(std::make_unique<PVal>());
    arena_.back()->kind = k;
    return arena_.back().get();
  }
  PVal* push(PVal::Kind k) {
    PVal* v = make(k);
    stack_.push_back(v);
    return v;
  }
  void push_int(int64_t v) { push(PVal::Int)->i = v; }
  void push_long(uint64_t nbytes) {  // little-endian two's complement of nbytes bytes
    const uint8_t* b = take(nbytes);
    if (nbytes > 8) {  // a Python big int: no tensor field is ever one
      push(PVal::Object)->s = "builtins int";
      return;
    }
    uint64_t v = 0;
    for (int i = int(nbytes) - 1; i >= 0; --i) v = (v << 8) | b[i];
    if (nbytes > 0 && nbytes < 8 && (b[nbytes - 1] & 0x80)) v |= ~uint64_t(0) << (8 * nbytes);  // sign-extend
    push_int(int64_t(v));
  }
  void push_str(PVal::Kind k, uint64_t len) {
    const uint8_t* b = take(len);
    push(k)->s.assign(reinterpret_cast<const char*>(b), len);
  }
  void push_memo(uint64_t key, uint64_t at) {
    auto it = memo_.find(key);
    DFSSM_CHECK(it != memo_.end(), path_, ": corrupt pickle (unknown memo key ", key, " at offset ", at,
                " of data.pkl)");
    stack_.push_back(it->second);
  }

  // -- the stack and its marks --
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  PVal* top(uint64_t at) {
    DFSSM_CHECK(stack_.size() > base(), path_, ": corrupt pickle (empty stack at offset ", at, " of data.pkl)");
    return stack_.back();
  }
  PVal* pop(const char* op, uint64_t at) {
    DFSSM_CHECK(stack_.size() > base(), path_, ": corrupt pickle (stack underflow in ", op, " at offset ", at,
                " of data.pkl)");
    PVal* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  std::vector<PVal*> pop_mark(uint64_t at) {
    DFSSM_CHECK(!marks_.empty(), path_, ": corrupt pickle (no MARK at offset ", at, " of data.pkl)");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PVal*> items(stack_.begin() + long(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  // Containers must be of the expected kind; opaque objects (custom classes) accept anything.
  void expect(const PVal* v, PVal::Kind k, const char* op, uint64_t at) {
    DFSSM_CHECK(v->kind == k || v->kind == PVal::Object, path_, ": corrupt pickle (", op, " on a ",
                kind_name(v->kind), " at offset ", at, " of data.pkl)");
  }

  // -- torch --
  // BINPERSID: ('storage', storage_type, key, location, numel).
  PVal* persistent(const PVal* pid, uint64_t at) {
    DFSSM_CHECK(pid->kind == PVal::Tuple && pid->items.size() == 5 && pid->items[0]->kind == PVal::Str &&
                    pid->items[0]->s == "storage" && pid->items[1]->kind == PVal::Global &&
                    pid->items[2]->kind == PVal::Str,
                path_, ": unsupported persistent id at offset ", at,
                " of data.pkl (expected ('storage', type, key, location, numel))");
    PVal* v = make(PVal::Storage);
    v->storage = std::make_unique<StorageRef>();
    StorageRef& s = *v->storage;
    s.type = pid->items[1]->s;
    s.key = pid->items[2]->s;
    s.untyped = s.type == "torch.storage UntypedStorage" || s.type == "torch UntypedStorage";
    s.dtype = s.untyped ? std::optional<DType>(DType::U8) : dtype_from_storage_type(s.type);
    if (pid->items[4]->kind == PVal::Int) s.numel = pid->items[4]->i;
    return v;
  }

  PVal* reduce(PVal* fn, PVal* args) {
    const auto& a = args->items;
    if (fn->kind != PVal::Global) return opaque(fn->s);
    const std::string& g = fn->s;
    if (g == "collections OrderedDict" || g == "builtins dict") {
      PVal* d = make(PVal::Dict);
      if (!a.empty() && a[0]->kind == PVal::List)  // OrderedDict([(k, v), ...])
        for (PVal* kv : a[0]->items)
          if (kv->kind == PVal::Tuple && kv->items.size() == 2) d->dict.emplace_back(kv->items[0], kv->items[1]);
      return d;
    }
    if (g == "torch._utils _rebuild_tensor_v2" || g == "torch._utils _rebuild_tensor")
      return rebuild_tensor(g, a, /*v3=*/false);
    if (g == "torch._utils _rebuild_tensor_v3") return rebuild_tensor(g, a, /*v3=*/true);
    // Wrappers whose first argument is the tensor itself: _rebuild_parameter(tensor, requires_grad,
    // hooks), _rebuild_parameter_with_state(..., state), _rebuild_device_tensor_from_cpu_tensor(
    // cpu_tensor, dtype, device, requires_grad).
    if (g == "torch._utils _rebuild_parameter" || g == "torch._utils _rebuild_parameter_with_state" ||
        g == "torch._utils _rebuild_device_tensor_from_cpu_tensor")
      return !a.empty() && a[0]->kind == PVal::Tensor ? a[0] : opaque(g);
    // Tensors with Python attributes or of a subclass: _rebuild_from_type_v2(func, type, args, state)
    // (torch._tensor; _rebuild_from_type(func, type, args, dict) in older releases).
    if (g == "torch._tensor _rebuild_from_type_v2" || g == "torch._tensor _rebuild_from_type" ||
        g == "torch._utils _rebuild_from_type_v2") {
      if (a.size() >= 3 && a[2]->kind == PVal::Tuple && depth_ < 16) {  // bounded: args may nest it again
        ++depth_;
        PVal* r = reduce(a[0], a[2]);
        --depth_;
        return r;
      }
      return opaque(g);
    }
    return opaque(g);  // anything else: an opaque object, an error only if used as a tensor
  }
  PVal* opaque(const std::string& global) {
    PVal* v = make(PVal::Object);
    v->s = global;
    return v;
  }

  // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) and
  // _rebuild_tensor_v3(..., hooks, dtype[, metadata]). Problems are recorded, not thrown, so that
  // a tensor nested in a skipped value cannot fail the load, and the message can name the key.
  PVal* rebuild_tensor(const std::string& g, const std::vector<PVal*>& a, bool v3) {
    PVal* v = make(PVal::Tensor);
    v->tensor = std::make_unique<TensorRef>();
    TensorRef& t = *v->tensor;
    const std::string fn = dotted(g);
    auto fail = [&](const std::string& why) {
      t.error = str("its ", fn, " record is corrupt or unsupported (", why, ")");
      return v;
    };
    if (a.size() < (v3 ? 7u : 4u)) return fail(str(a.size(), " arguments"));
    if (a[0]->kind != PVal::Storage) return fail(str("argument 0 is a ", kind_name(a[0]->kind), ", not a storage"));
    if (a[1]->kind != PVal::Int) return fail("storage offset is not an integer");
    t.storage = a[0]->storage.get();
    t.offset = a[1]->i;
    for (int which = 2; which <= 3; ++which) {
      const PVal* tup = a[size_t(which)];
      if (tup->kind != PVal::Tuple) return fail(str(which == 2 ? "size" : "stride", " is not a tuple"));
      auto& out = which == 2 ? t.shape : t.stride;
      for (const PVal* x : tup->items) {
        if (x->kind != PVal::Int || x->i < 0)
          return fail(str(which == 2 ? "size" : "stride", " entries must be non-negative integers"));
        out.push_back(x->i);
      }
    }
    if (t.shape.size() != t.stride.size()) return fail("size and stride ranks differ");
    if (t.shape.size() > kMaxRank) return fail(str("rank ", t.shape.size()));
    if (t.offset < 0) return fail("negative storage offset");
    if (v3) {
      if (a[6]->kind != PVal::Global) return fail("dtype argument is not a torch dtype");
      const std::string& dg = a[6]->s;
      t.dtype = dg.compare(0, 6, "torch ") == 0 ? dtype_from_torch(dg.substr(6)) : std::nullopt;
      if (!t.dtype) return fail(str("unsupported dtype ", dotted(dg)));
    } else {
      if (t.storage->untyped) return fail("an untyped storage needs _rebuild_tensor_v3");
      if (!t.storage->dtype) return fail(str("unsupported storage type ", dotted(t.storage->type)));
      t.dtype = t.storage->dtype;
    }
    return v;
  }

  const uint8_t* p_;
  uint64_t n_, pos_ = 0;
  const std::string& path_;
  std::vector<std::unique_ptr<PVal>> arena_;
  std::vector<PVal*> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, PVal*> memo_;
  int depth_ = 0;
};

}  // namespace

TorchZipFile TorchZipFile::open(const std::string& path) {
  TorchZipFile f;
  f.path_ = path;
  void* m = map_readonly(path, 22, "torch.save zip archive", &f.size_);
  f.map_ = m;  // owned by f from here: unmapped by its destructor if validation throws
  const Bytes b{static_cast<const uint8_t*>(m), f.size_, &f.path_};
  const auto zip = read_zip(b);

  // The pickle is <dir>/data.pkl for one top-level folder <dir> whose name varies.
  std::string pkl;
  for (const auto& kv : zip) {
    const std::string& name = kv.first;
    const size_t slash = name.find('/');
    if (slash != std::string::npos && slash > 0 && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      DFSSM_CHECK(pkl.empty(), path, ": zip archive has two pickles ('", pkl, "' and '", name,
                  "'); not a torch.save file");
      pkl = name;
    }
  }
  DFSSM_CHECK(!pkl.empty(), path, ": zip archive has no <folder>/data.pkl entry (not a torch.save file)");
  const std::string prefix = pkl.substr(0, pkl.size() - 8);  // "<dir>/"
  auto bo = zip.find(prefix + "byteorder");
  if (bo != zip.end()) {
    const std::string order(reinterpret_cast<const char*>(b.p + bo->second.data_offset), bo->second.size);
    DFSSM_CHECK(order == "little", path, ": archive was written on a '", order,
                "'-endian machine; only little-endian archives are supported");
  }

  const ZipEntry& e = zip.at(pkl);
  Unpickler up(b.p + e.data_offset, e.size, f.path_);
  const PVal* root = up.run();
  DFSSM_CHECK(root->kind == PVal::Dict, path, ": torch.save archive holds a ", kind_name(root->kind),
              ", expected a dict (a state dict) at the top level");

  // Python dict semantics: a repeated key keeps its first position and takes the last value.
  std::vector<std::pair<std::string, const PVal*>> items;
  std::map<std::string, size_t> pos;
  for (const auto& kv : root->dict) {
    if (kv.first->kind != PVal::Str) continue;
    auto [it, fresh] = pos.emplace(kv.first->s, items.size());
    if (fresh) {
      items.emplace_back(kv.first->s, kv.second);
    } else {
      items[it->second].second = kv.second;
    }
  }

  for (const auto& [name, v] : items) {
    const std::string where = str(path, ": tensor '", name, "'");
    if (v->kind == PVal::Object &&
        (v->s.rfind("torch._utils _rebuild", 0) == 0 || v->s.rfind("torch._tensor _rebuild", 0) == 0))
      throw Error(str(where, " is stored with ", dotted(v->s),
                      ", which is not supported (only dense CPU/CUDA tensors are)"));
    if (v->kind != PVal::Tensor) continue;  // non-tensor entries (ints, strings, sub-dicts) are skipped
    const TensorRef& r = *v->tensor;
    DFSSM_CHECK(r.error.empty(), where, ": ", r.error);
    TorchZipTensor t;
    t.name = name;
    t.dtype = *r.dtype;
    t.shape = r.shape;
    t.stride = r.stride;
    t.storage_offset = r.offset;
    t.storage_key = prefix + "data/" + r.storage->key;
    auto se = zip.find(t.storage_key);
    DFSSM_CHECK(se != zip.end(), where, ": its storage '", t.storage_key, "' is missing from the archive");
    t.storage = b.p + se->second.data_offset;
    t.storage_nbytes = se->second.size;
    const size_t es = dtype_size(t.dtype);
    if (r.storage->numel >= 0) {  // the persistent id's numel counts storage elements (bytes if untyped)
      const size_t ses = r.storage->untyped ? 1 : es;
      DFSSM_CHECK(u128(uint64_t(r.storage->numel)) * ses == t.storage_nbytes, where, ": storage '",
                  t.storage_key, "' has ", t.storage_nbytes, " bytes but the pickle says ", r.storage->numel,
                  " elements of ", ses, " bytes (truncated or corrupt)");
    }
    const auto need = needed_bytes(t.shape, t.stride, t.storage_offset, es);
    DFSSM_CHECK(need.has_value(), where, ": size/stride/offset overflow (corrupt)");
    DFSSM_CHECK(*need <= t.storage_nbytes, where, " (", dtype_name(t.dtype), ", offset ", t.storage_offset,
                ") needs ", *need, " bytes of storage '", t.storage_key, "', which has only ", t.storage_nbytes);
    f.index_[t.name] = f.tensors_.size();
    f.tensors_.push_back(std::move(t));
  }
  DFSSM_CHECK(!f.tensors_.empty(), path, ": no tensors found in the torch.save archive");
  return f;
}

TorchZipFile::TorchZipFile(TorchZipFile&& o) noexcept { *this = std::move(o); }

TorchZipFile& TorchZipFile::operator=(TorchZipFile&& o) noexcept {
  if (this != &o) {
    if (map_) munmap(map_, size_);
    path_ = std::move(o.path_);
    map_ = o.map_;
    size_ = o.size_;
    tensors_ = std::move(o.tensors_);
    index_ = std::move(o.index_);
    o.map_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

TorchZipFile::~TorchZipFile() {
  if (map_) munmap(map_, size_);
}

const TorchZipTensor* TorchZipFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void TorchZipFile::copy_contiguous(const TorchZipTensor& t, void* dst) const {
  const size_t es = dtype_size(t.dtype);
  const auto need = needed_bytes(t.shape, t.stride, t.storage_offset, es);
  const auto* base = static_cast<const uint8_t*>(map_);
  DFSSM_ASSERT(need && *need <= t.storage_nbytes && t.storage >= base && t.storage_nbytes <= size_ &&
                   uint64_t(t.storage - base) <= size_ - t.storage_nbytes,
               "tensor '", t.name, "' does not belong to ", path_);
  const int64_t n = t.numel();
  if (n == 0) return;
  const uint8_t* src = t.storage + uint64_t(t.storage_offset) * es;
  auto* out = static_cast<uint8_t*>(dst);
  if (t.is_contiguous()) {
    std::memcpy(out, src, size_t(n) * es);
    return;
  }
  // Drop size-1 dimensions and merge neighbours that are contiguous with each other, then walk
  // the outer dimensions with an odometer and copy the innermost run in one loop.
  std::vector<int64_t> sh, sd;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (t.shape[i] == 1) continue;
    if (!sh.empty() && sd.back() == t.stride[i] * t.shape[i]) {
      sh.back() *= t.shape[i];
      sd.back() = t.stride[i];
    } else {
      sh.push_back(t.shape[i]);
      sd.push_back(t.stride[i]);
    }
  }
  DFSSM_ASSERT(!sh.empty(), "non-contiguous tensor without dimensions");
  const size_t nd = sh.size();
  const int64_t inner = sh.back(), istride = sd.back();
  const int64_t rows = n / inner;
  std::vector<int64_t> idx(nd, 0);
  int64_t off = 0;  // element offset of the current row
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* p = src + size_t(off) * es;
    if (istride == 1) {
      std::memcpy(out, p, size_t(inner) * es);
      out += size_t(inner) * es;
    } else {
      const size_t step = size_t(istride) * es;
      for (int64_t k = 0; k < inner; ++k, p += step, out += es) std::memcpy(out, p, es);
    }
    for (size_t i = nd - 1; i-- > 0;) {
      off += sd[i];
      if (++idx[i] < sh[i]) break;
      off -= sd[i] * sh[i];
      idx[i] = 0;
    }
  }
}

}  // namespace dfssm
