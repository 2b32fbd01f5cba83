// hashPages(path, pageSize): the SHA-256 of every page of a file and of the whole file (native/core/util/
// page_hashes.h), on a libuv worker thread; lazyd replicate's page comparison (src/replicate/page-delta.ts).
#include <string>
#include <utility>

#include "binding/convert.h"
#include "binding/exports.h"
#include "util/page_hashes.h"

namespace lazyd::binding {
namespace {

class HashPagesWorker final : public Napi::AsyncWorker {
 public:
  HashPagesWorker(Napi::Env env, std::string path, size_t page_size)
      : Napi::AsyncWorker(env, "lazyd-hash-pages"), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)), page_size_(page_size) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override { result_ = lazyd::hash_file_pages(path_, page_size_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (result_.err) {
      deferred_.Reject(errno_error(env, result_.err, result_.what).Value());
      return;
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("size", uint64_value(env, result_.size));
    out.Set("hashes", Napi::Buffer<uint8_t>::Copy(env, result_.pages.data(), result_.pages.size()));
    out.Set("sha256", Napi::String::New(env, lazyd::hex_digest(result_.whole, lazyd::kSha256Bytes)));
    deferred_.Resolve(out);
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  size_t page_size_;
  lazyd::PageHashesResult result_;
};

}  // namespace

// hashPages(path, pageSize): a promise of { size, hashes: Buffer (32 bytes per page; empty for pageSize 0),
// sha256: hex of the whole file }, rejected with the errno error of a failed open or read.
Napi::Value hash_pages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "hashPages(path, pageSize): expected a string and a number");
  const double page_size = info[1].As<Napi::Number>().DoubleValue();
  if (page_size < 0 || page_size > (1 << 30) || page_size != static_cast<double>(static_cast<size_t>(page_size))) {
    throw Napi::RangeError::New(env, "hashPages: pageSize must be an integer in 0..2^30 (0: the whole-file hash alone)");
  }
  auto* worker = new HashPagesWorker(env, info[0].As<Napi::String>().Utf8Value(), static_cast<size_t>(page_size));  // deletes itself
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

}  // namespace lazyd::binding
