// The staging half of the PageServer class: the images of a sealed upload (writePages), the CLOSE status
// (ackUpload), releasing a staged checkpoint (release), and what events say about uploads.
#include <memory>
#include <string>
#include <vector>

#include "binding/convert.h"
#include "binding/page_server.h"
#include "staging/page_files.h"

namespace lazyd::binding {

Napi::Object upload_stats_object(Napi::Env env, const lazyd::UploadStats& stats) {
  Napi::Object object = Napi::Object::New(env);
  object.Set("opens", uint64_value(env, stats.opens));
  object.Set("entries", uint64_value(env, stats.entries));
  object.Set("pagesWithData", uint64_value(env, stats.pages_with_data));
  object.Set("pagesWithoutData", uint64_value(env, stats.pages_without_data));
  object.Set("bytesIn", uint64_value(env, stats.bytes_in));
  object.Set("closeSeen", Napi::Boolean::New(env, stats.close_seen));
  return object;
}

// The pagemaps of a store, for writing the images: [{ type: 'pid' | 'shmem', id, entries: BigUint64Array
// [vaddr, nrPages, flags] * n }] in the order the upload opened them.
Napi::Array store_pagemaps(Napi::Env env, const lazyd::PageStore& store) {
  Napi::Array out = Napi::Array::New(env, store.keys().size());
  uint32_t i = 0;
  for (lazyd::PageKey key : store.keys()) {
    Napi::Object pagemap = Napi::Object::New(env);
    pagemap.Set("type", lazyd::key_type(key) == lazyd::wire::PS_TYPE_PID ? "pid" : "shmem");
    pagemap.Set("id", uint64_value(env, lazyd::key_id(key)));
    const std::vector<lazyd::StoreEntry>& entries = *store.entries(key);
    Napi::BigUint64Array packed = Napi::BigUint64Array::New(env, entries.size() * 3);
    for (size_t e = 0; e < entries.size(); e++) {
      packed[e * 3] = entries[e].vaddr;
      packed[e * 3 + 1] = entries[e].nr_pages;
      packed[e * 3 + 2] = entries[e].flags;
    }
    pagemap.Set("entries", packed);
    out.Set(i++, pagemap);
  }
  return out;
}


namespace {

// Writes one page file on a libuv worker thread (page_files.h), then settles writePages()'s promise on the
// JavaScript thread. Holds the store, so a release or a session end meanwhile cannot free it.
class WritePagesWorker final : public Napi::AsyncWorker {
 public:
  WritePagesWorker(Napi::Env env, std::shared_ptr<const lazyd::PageStore> store, lazyd::PageKey key, std::string path,
                   bool include_lazy)
      : Napi::AsyncWorker(env, "lazyd-write-pages"),
        deferred_(Napi::Promise::Deferred::New(env)),
        store_(std::move(store)),
        key_(key),
        path_(std::move(path)),
        include_lazy_(include_lazy) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override { result_ = lazyd::write_page_file(*store_, key_, path_, include_lazy_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (result_.err) {
      deferred_.Reject(errno_error(env, result_.err, result_.what).Value());
    } else {
      deferred_.Resolve(uint64_value(env, static_cast<uint64_t>(result_.bytes)));
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<const lazyd::PageStore> store_;
  lazyd::PageKey key_;
  std::string path_;
  bool include_lazy_;
  lazyd::PageFileResult result_;
};

}  // namespace

// writePages(session, type 'pid'|'shmem', id, path, includeLazy): writes the pages-N.img of one pagemap of
// an upload that is waiting for ackUpload, atomically (temp file, fsync, rename), off the JavaScript thread.
// Returns a promise of the bytes written (rejected with the errno error of a failed write); throws at once
// when there is no such sealed upload.
Napi::Value PageServerWrap::WritePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t session = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
  const std::string type = info[1].As<Napi::String>();
  const uint64_t id = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
  const std::string path = info[3].As<Napi::String>();
  const bool include_lazy = info[4].ToBoolean();
  std::shared_ptr<const lazyd::PageStore> store = server_ ? server_->staging().sealed(session) : nullptr;
  if (!store) throw Napi::Error::New(env, "writePages: no sealed upload #" + std::to_string(session));
  const lazyd::PageKey key = type == "pid" ? lazyd::pid_key(id) : lazyd::shmem_key(id);
  auto* worker = new WritePagesWorker(env, std::move(store), key, path, include_lazy);  // deletes itself
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

// ackUpload(session, ok, message): the images of a sealed upload are written (ok) or could not be (the
// dump then fails and CRIU resumes the tasks).
Napi::Value PageServerWrap::AckUpload(const Napi::CallbackInfo& info) {
  const uint64_t session = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
  const bool ok = info[1].ToBoolean();
  const std::string message = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
  if (server_) server_->ack_upload(session, ok, message);  // also ends writePages' access to the store
  return info.Env().Undefined();
}


// release(checkpoint, reason): new sessions no longer fetch from it; its memory goes when the last
// session using it ends.
Napi::Value PageServerWrap::Release(const Napi::CallbackInfo& info) {
  const uint64_t checkpoint = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
  const std::string reason = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "released";
  if (server_) server_->release(checkpoint, reason);
  return info.Env().Undefined();
}

}  // namespace lazyd::binding
