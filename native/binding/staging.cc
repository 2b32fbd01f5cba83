// The staging half of the PageServer class: the images of a sealed upload (writePages), the CLOSE status
// (ackUpload), releasing a staged checkpoint (release), and what events say about uploads.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "binding/convert.h"
#include "binding/page_server.h"

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


// writePages(session, type 'pid'|'shmem', id, path, includeLazy): writes the pages-N.img of one pagemap of
// an upload that is waiting for ackUpload (or of a staged checkpoint), atomically (temp file + rename).
// Returns the bytes written. Runs on the JavaScript thread; the store is sealed and read-only.
Napi::Value PageServerWrap::WritePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t session = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
  const std::string type = info[1].As<Napi::String>();
  const uint64_t id = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
  const std::string path = info[3].As<Napi::String>();
  const bool include_lazy = info[4].ToBoolean();
  auto found = stores_.find(session);
  if (found == stores_.end()) throw Napi::Error::New(env, "writePages: no sealed upload #" + std::to_string(session));
  const lazyd::PageKey key = type == "pid" ? lazyd::pid_key(id) : lazyd::shmem_key(id);
  const std::string temp = path + ".tmp";
  int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw errno_error(env, -errno, "cannot create " + temp);
  int64_t written = found->second->write_pages(key, fd, include_lazy);
  int err = written < 0 ? static_cast<int>(written) : 0;
  if (!err && fsync(fd) < 0) err = -errno;
  if (close(fd) < 0 && !err) err = -errno;
  if (!err && rename(temp.c_str(), path.c_str()) < 0) err = -errno;
  if (err) {
    unlink(temp.c_str());
    throw errno_error(env, err, "cannot write " + path);
  }
  return uint64_value(env, static_cast<uint64_t>(written));
}


// ackUpload(session, ok, message): the images of a sealed upload are written (ok) or could not be (the
// dump then fails and CRIU resumes the tasks).
Napi::Value PageServerWrap::AckUpload(const Napi::CallbackInfo& info) {
  const uint64_t session = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
  const bool ok = info[1].ToBoolean();
  const std::string message = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
  stores_.erase(session);
  if (server_) server_->ack_upload(session, ok, message);
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
