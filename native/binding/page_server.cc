// The one Node-API file: wraps the C++ core for the TypeScript control plane. Nothing here is on a hot path:
// the core runs its own threads, and events reach JavaScript through a thread-safe function that never blocks
// the core (non-blocking calls into an unbounded queue).
#include <napi.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <memory>
#include <unistd.h>

#include "lazy/fault_engine.h"
#include "kernel/host_probe.h"
#include "server/page_index.h"
#include "server/page_server.h"
#include "kernel/sd_notify.h"
#include "net/tls_context.h"
#include "wire/wire.h"

namespace {

Napi::Error errno_error(Napi::Env env, int negative_errno, const std::string& what) {
  const int err = -negative_errno;
  Napi::Error error = Napi::Error::New(env, what + ": " + strerror(err));
  const char* code = "EUNKNOWN";
  switch (err) {
    case EADDRINUSE: code = "EADDRINUSE"; break;
    case EADDRNOTAVAIL: code = "EADDRNOTAVAIL"; break;
    case EACCES: code = "EACCES"; break;
    case EPERM: code = "EPERM"; break;
    case EINVAL: code = "EINVAL"; break;
    case ENOENT: code = "ENOENT"; break;
    case EEXIST: code = "EEXIST"; break;
    case EMFILE: code = "EMFILE"; break;
    case ECONNREFUSED: code = "ECONNREFUSED"; break;
  }
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, err));
  return error;
}

// The `tls` option of PageServer and LazyPages: undefined (plain TCP) or { cacert, cacrl, cert, key, noCnVerify,
// peerName } (empty strings: criu's defaults, §1.9). Loads the credentials; a bad file throws its one-line message.
std::shared_ptr<const lazyd::TlsContext> tls_option(Napi::Env env, Napi::Value value) {
  if (!value.IsObject()) return nullptr;
  Napi::Object o = value.As<Napi::Object>();
  auto text = [&](const char* name) {
    Napi::Value v = o.Get(name);
    return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  };
  lazyd::TlsOptions options;
  options.cacert = text("cacert");
  options.cacrl = text("cacrl");
  options.cert = text("cert");
  options.key = text("key");
  options.peer_name = text("peerName");
  options.no_cn_verify = o.Get("noCnVerify").ToBoolean();
  std::string error;
  std::shared_ptr<lazyd::TlsContext> context = lazyd::TlsContext::create(options, &error);
  if (!context) throw Napi::Error::New(env, error);
  return context;
}

// tlsCheck(options): loads the credentials as the daemons will; returns the notes for the log ("" if none).
Napi::Value TlsCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<const lazyd::TlsContext> context = tls_option(env, info[0]);
  if (!context) throw Napi::Error::New(env, "tlsCheck: expected an options object");
  return Napi::String::New(env, context->notes());
}

Napi::Value uint64_value(Napi::Env env, uint64_t value) {
  return value <= (1ull << 53) ? Napi::Value(Napi::Number::New(env, static_cast<double>(value)))
                               : Napi::Value(Napi::BigInt::New(env, value));
}

Napi::Object session_stats_object(Napi::Env env, const lazyd::SessionStats& stats) {
  Napi::Object object = Napi::Object::New(env);
  object.Set("gets", uint64_value(env, stats.gets));
  object.Set("pages", uint64_value(env, stats.pages));
  object.Set("bytesOut", uint64_value(env, stats.bytes_out));
  object.Set("closedByRequest", Napi::Boolean::New(env, stats.closed_by_request));
  return object;
}

const char* event_kind_name(lazyd::ServerEvent::Kind kind) {
  switch (kind) {
    case lazyd::ServerEvent::Kind::kSessionStart: return "session-start";
    case lazyd::ServerEvent::Kind::kSessionEnd: return "session-end";
    case lazyd::ServerEvent::Kind::kRefused: return "refused";
    case lazyd::ServerEvent::Kind::kStopped: return "stopped";
    case lazyd::ServerEvent::Kind::kUploadSealed: return "upload-sealed";
    case lazyd::ServerEvent::Kind::kStaged: return "staged";
    case lazyd::ServerEvent::Kind::kRestoreDone: return "restore-done";
    case lazyd::ServerEvent::Kind::kReleased: return "released";
  }
  return "?";
}

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

// new PageServer({ format, maxRequestPages, maxQueuedReplies, maxQueuedBytes, singleSession, maxSessions,
//   stallTimeoutMs, idleTimeoutMs, acceptUploads, stagingMaxBytes, stagingRestores, tls, tlsHandshakeTimeoutMs,
//   onEvent })
class PageServerWrap : public Napi::ObjectWrap<PageServerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PageServer",
                       {InstanceMethod("addFile", &PageServerWrap::AddFile),
                        InstanceMethod("addTask", &PageServerWrap::AddTask),
                        InstanceMethod("listen", &PageServerWrap::Listen),
                        InstanceMethod("start", &PageServerWrap::Start),
                        InstanceMethod("stop", &PageServerWrap::Stop),
                        InstanceMethod("stats", &PageServerWrap::Stats),
                        InstanceMethod("writePages", &PageServerWrap::WritePages),
                        InstanceMethod("ackUpload", &PageServerWrap::AckUpload),
                        InstanceMethod("release", &PageServerWrap::Release)});
  }

  explicit PageServerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PageServerWrap>(info) {
    Napi::Env env = info.Env();
    Napi::Object options = info[0].As<Napi::Object>();
    auto number = [&](const char* name, double fallback) {
      Napi::Value value = options.Get(name);
      return value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : fallback;
    };
    const int format = static_cast<int>(number("format", 0));
    config_.session.format = format == 24   ? lazyd::wire::Format::V24
                             : format == 32 ? lazyd::wire::Format::V32
                                            : lazyd::wire::Format::Unknown;
    config_.session.max_request_pages = static_cast<uint64_t>(number("maxRequestPages", 65536));
    config_.session.max_queued_replies = static_cast<size_t>(number("maxQueuedReplies", 64));
    config_.single_session = options.Get("singleSession").ToBoolean();
    config_.max_sessions = static_cast<size_t>(number("maxSessions", 1024));
    config_.stall_timeout_ms = static_cast<int>(number("stallTimeoutMs", 30000));
    config_.idle_timeout_ms = static_cast<int>(number("idleTimeoutMs", 300000));
    config_.session.max_queued_bytes = static_cast<uint64_t>(number("maxQueuedBytes", 64.0 * 1024 * 1024));
    config_.accept_uploads = options.Get("acceptUploads").ToBoolean();
    config_.staging_max_bytes = static_cast<uint64_t>(number("stagingMaxBytes", 1024.0 * 1024 * 1024));
    config_.staging_restores = static_cast<uint64_t>(number("stagingRestores", 0));
    config_.upload.format = config_.session.format;
    config_.tls = tls_option(env, options.Get("tls"));
    config_.tls_handshake_timeout_ms = static_cast<int>(number("tlsHandshakeTimeoutMs", 10000));
    index_ = std::make_shared<lazyd::PageIndex>(static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
    events_ = Napi::ThreadSafeFunction::New(env, options.Get("onEvent").As<Napi::Function>(), "lazyd-page-server",
                                            0, 1);
  }

  ~PageServerWrap() override {
    server_.reset();
    if (!released_) events_.Release();
  }

 private:
  Napi::Value AddFile(const Napi::CallbackInfo& info) {
    const std::string path = info[0].As<Napi::String>();
    if (server_) throw Napi::Error::New(info.Env(), "addFile after start");
    int index = index_->add_file(path);
    if (index < 0) throw errno_error(info.Env(), index, "cannot open " + path);
    return Napi::Number::New(info.Env(), index);
  }

  // addTask(pid, runs: BigUint64Array of [vaddr, nrPages, flags, fileIndex (2^64-1: none), fileOffset] * n)
  Napi::Value AddTask(const Napi::CallbackInfo& info) {
    if (server_) throw Napi::Error::New(info.Env(), "addTask after start");
    const uint64_t pid = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    Napi::BigUint64Array packed = info[1].As<Napi::BigUint64Array>();
    if (packed.ElementLength() % 5 != 0) throw Napi::Error::New(info.Env(), "addTask: runs must be 5-tuples");
    std::vector<lazyd::PageRun> runs;
    for (size_t i = 0; i < packed.ElementLength(); i += 5) {
      lazyd::PageRun run;
      run.vaddr = packed[i];
      run.nr_pages = packed[i + 1];
      run.flags = static_cast<uint32_t>(packed[i + 2]);
      run.file = packed[i + 3] == UINT64_MAX ? -1 : static_cast<int32_t>(packed[i + 3]);
      run.file_offset = packed[i + 4];
      runs.push_back(run);
    }
    int result = index_->add_task(pid, std::move(runs));
    if (result < 0) throw errno_error(info.Env(), result, "pid " + std::to_string(pid) + ": bad page runs");
    return info.Env().Undefined();
  }

  Napi::Value Listen(const Napi::CallbackInfo& info) {
    const std::string address = info[0].As<Napi::String>();
    const uint32_t port = info[1].As<Napi::Number>().Uint32Value();
    if (!server_) {
      server_ = std::make_unique<lazyd::PageServer>(config_, index_, [this](const lazyd::ServerEvent& event) {
        post(event);
      });
    }
    uint16_t bound = 0;
    int result = server_->listen(address, static_cast<uint16_t>(port), &bound);
    if (result < 0) {
      throw errno_error(info.Env(), result,
                        "cannot listen on " + (address.empty() ? std::string("*") : address) + ":" + std::to_string(port));
    }
    return Napi::Number::New(info.Env(), bound);
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (!server_) throw Napi::Error::New(info.Env(), "start before listen");
    int result = server_->start();
    if (result < 0) throw errno_error(info.Env(), result, "cannot start the page server thread");
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    const int drain_ms = info.Length() > 0 ? info[0].As<Napi::Number>().Int32Value() : 10000;
    if (server_) server_->request_stop(drain_ms);
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object object = Napi::Object::New(env);
    if (!server_) return object;
    const lazyd::ServerCounters& c = server_->counters();
    object.Set("sessionsTotal", uint64_value(env, c.sessions_total));
    object.Set("sessionsActive", uint64_value(env, c.sessions_active));
    object.Set("sessionsFailed", uint64_value(env, c.sessions_failed));
    object.Set("getsTotal", uint64_value(env, c.gets_total));
    object.Set("pagesTotal", uint64_value(env, c.pages_total));
    object.Set("bytesTotal", uint64_value(env, c.bytes_total));
    object.Set("bytesReceived", uint64_value(env, c.bytes_received));
    object.Set("tlsFailures", uint64_value(env, c.tls_failures));
    object.Set("requestsInFlight", uint64_value(env, c.requests_in_flight));
    object.Set("stagingBytes", uint64_value(env, server_->budget().used()));
    object.Set("stagingMaxBytes", uint64_value(env, server_->budget().limit()));
    return object;
  }

  // writePages(session, type 'pid'|'shmem', id, path, includeLazy): writes the pages-N.img of one pagemap of
  // an upload that is waiting for ackUpload (or of a staged checkpoint), atomically (temp file + rename).
  // Returns the bytes written. Runs on the JavaScript thread; the store is sealed and read-only.
  Napi::Value WritePages(const Napi::CallbackInfo& info) {
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
  Napi::Value AckUpload(const Napi::CallbackInfo& info) {
    const uint64_t session = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    const bool ok = info[1].ToBoolean();
    const std::string message = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
    stores_.erase(session);
    if (server_) server_->ack_upload(session, ok, message);
    return info.Env().Undefined();
  }

  // release(checkpoint, reason): new sessions no longer fetch from it; its memory goes when the last
  // session using it ends.
  Napi::Value Release(const Napi::CallbackInfo& info) {
    const uint64_t checkpoint = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    const std::string reason = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "released";
    if (server_) server_->release(checkpoint, reason);
    return info.Env().Undefined();
  }

  // Called on the server thread: copy the event and queue it for the JavaScript thread.
  void post(const lazyd::ServerEvent& event) {
    auto* copy = new lazyd::ServerEvent(event);
    const bool last = event.kind == lazyd::ServerEvent::Kind::kStopped;
    events_.NonBlockingCall(copy, [this](Napi::Env env, Napi::Function callback, lazyd::ServerEvent* data) {
      std::unique_ptr<lazyd::ServerEvent> owned(data);
      Napi::Object object = Napi::Object::New(env);
      object.Set("type", event_kind_name(owned->kind));
      object.Set("session", uint64_value(env, owned->session));
      object.Set("peer", owned->peer);
      object.Set("ok", owned->ok);
      object.Set("message", owned->message);
      object.Set("format", owned->format);
      object.Set("seconds", owned->seconds);
      object.Set("stats", session_stats_object(env, owned->stats));
      object.Set("upload", owned->upload);
      if (owned->upload) object.Set("uploadStats", upload_stats_object(env, owned->upload_stats));
      object.Set("checkpoint", uint64_value(env, owned->checkpoint));
      object.Set("restores", uint64_value(env, owned->restores));
      object.Set("memoryUsed", uint64_value(env, owned->memory_used));
      if (owned->store) {
        object.Set("pagemaps", store_pagemaps(env, *owned->store));
        object.Set("bytesHeld", uint64_value(env, owned->store->bytes_held()));
      }
      if (owned->kind == lazyd::ServerEvent::Kind::kUploadSealed && owned->store) {
        stores_[owned->session] = owned->store;  // until ackUpload
      }
      callback.Call({object});
    });
    if (last) {
      // The thread ends right after this event: let Node exit once the queue is drained.
      events_.Release();
      released_ = true;
    }
  }

  lazyd::PageServerConfig config_;
  std::shared_ptr<lazyd::PageIndex> index_;
  std::unique_ptr<lazyd::PageServer> server_;
  Napi::ThreadSafeFunction events_;
  bool released_ = false;
  std::map<uint64_t, std::shared_ptr<const lazyd::PageStore>> stores_;  // sealed uploads awaiting ackUpload (JS thread)
};


const char* engine_event_name(lazyd::EngineEvent::Kind kind) {
  using K = lazyd::EngineEvent::Kind;
  switch (kind) {
    case K::kListening: return "listening";
    case K::kRestoreConnected: return "restore-connected";
    case K::kTask: return "task";
    case K::kZombie: return "zombie";
    case K::kRestoreFinished: return "restore-finished";
    case K::kSourceConnected: return "source-connected";
    case K::kFork: return "fork";
    case K::kTaskExited: return "task-exited";
    case K::kTaskDone: return "task-done";
    case K::kWarning: return "warning";
    case K::kDone: return "done";
    case K::kFailed: return "failed";
  }
  return "?";
}

Napi::Object engine_summary_object(Napi::Env env, const lazyd::EngineSummary& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("faults", uint64_value(env, s.faults));
  o.Set("pagesFault", uint64_value(env, s.pages_fault));
  o.Set("pagesAround", uint64_value(env, s.pages_around));
  o.Set("pagesBackground", uint64_value(env, s.pages_background));
  o.Set("pagesZero", uint64_value(env, s.pages_zero));
  o.Set("pagesExist", uint64_value(env, s.pages_exist));
  o.Set("pagesDropped", uint64_value(env, s.pages_dropped));
  o.Set("pagesTotal", uint64_value(env, s.pages_total));
  o.Set("bytesReceived", uint64_value(env, s.bytes_received));
  o.Set("seconds", s.seconds);
  return o;
}

// new LazyPages({ workDir, nrTasks, tasks: [{ pid, runs: BigUint64Array [imgStart, nrPages, fd|2^64-1, offset]* }],
//   source: 'local' | 'remote', address, port, format, faultAroundBytes, bgMinBytes, bgMaxBytes, bgInFlightBytes,
//   bgInFlightBytesFaulting, background,
//   acceptTimeoutMs, handoverTimeoutMs, rstfTimeoutMs, connectTimeoutMs, stallTimeoutMs, closeTimeoutMs, tls, onEvent })
class LazyPagesWrap : public Napi::ObjectWrap<LazyPagesWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "LazyPages",
                       {InstanceMethod("start", &LazyPagesWrap::Start), InstanceMethod("stop", &LazyPagesWrap::Stop),
                        InstanceMethod("stats", &LazyPagesWrap::Stats),
                        InstanceMethod("socketPath", &LazyPagesWrap::SocketPath),
                        InstanceMethod("error", &LazyPagesWrap::Error)});
  }

  explicit LazyPagesWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LazyPagesWrap>(info) {
    Napi::Env env = info.Env();
    Napi::Object o = info[0].As<Napi::Object>();
    auto number = [&](const char* name, double fallback) {
      Napi::Value v = o.Get(name);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
    };
    lazyd::FaultEngineConfig c;
    c.work_dir = o.Get("workDir").As<Napi::String>();
    c.nr_tasks = static_cast<size_t>(number("nrTasks", 0));
    Napi::Array tasks = o.Get("tasks").As<Napi::Array>();
    for (uint32_t i = 0; i < tasks.Length(); i++) {
      Napi::Object t = tasks.Get(i).As<Napi::Object>();
      lazyd::FaultEngineConfig::Task task;
      task.pid = t.Get("pid").As<Napi::Number>().Int32Value();
      Napi::BigUint64Array runs = t.Get("runs").As<Napi::BigUint64Array>();
      if (runs.ElementLength() % 4 != 0) throw Napi::Error::New(env, "LazyPages: runs must be 4-tuples");
      for (size_t r = 0; r < runs.ElementLength(); r += 4) {
        lazyd::FaultEngineConfig::Run run;
        run.img_start = runs[r];
        run.nr_pages = runs[r + 1];
        run.fd = runs[r + 2] == UINT64_MAX ? -1 : static_cast<int>(runs[r + 2]);
        run.file_offset = runs[r + 3];
        task.runs.push_back(run);
      }
      c.tasks.push_back(std::move(task));
    }
    const std::string source = o.Get("source").ToString();
    c.source = source == "remote" ? lazyd::FaultEngineConfig::Source::kRemote : lazyd::FaultEngineConfig::Source::kLocal;
    if (o.Get("address").IsString()) c.address = o.Get("address").As<Napi::String>();
    c.port = static_cast<uint16_t>(number("port", 0));
    c.format = number("format", 24) == 32 ? lazyd::wire::Format::V32 : lazyd::wire::Format::V24;
    c.fault_around_bytes = static_cast<uint64_t>(number("faultAroundBytes", static_cast<double>(c.fault_around_bytes)));
    c.bg_min_bytes = static_cast<uint64_t>(number("bgMinBytes", static_cast<double>(c.bg_min_bytes)));
    c.bg_max_bytes = static_cast<uint64_t>(number("bgMaxBytes", static_cast<double>(c.bg_max_bytes)));
    c.bg_in_flight_bytes = static_cast<uint64_t>(number("bgInFlightBytes", static_cast<double>(c.bg_in_flight_bytes)));
    c.bg_in_flight_bytes_faulting = static_cast<uint64_t>(
        number("bgInFlightBytesFaulting", static_cast<double>(c.bg_in_flight_bytes_faulting)));
    if (o.Get("background").IsBoolean()) c.background = o.Get("background").ToBoolean();
    c.accept_timeout_ms = static_cast<int>(number("acceptTimeoutMs", c.accept_timeout_ms));
    c.handover_timeout_ms = static_cast<int>(number("handoverTimeoutMs", c.handover_timeout_ms));
    c.rstf_timeout_ms = static_cast<int>(number("rstfTimeoutMs", c.rstf_timeout_ms));
    c.connect_timeout_ms = static_cast<int>(number("connectTimeoutMs", c.connect_timeout_ms));
    c.stall_timeout_ms = static_cast<int>(number("stallTimeoutMs", c.stall_timeout_ms));
    c.close_timeout_ms = static_cast<int>(number("closeTimeoutMs", c.close_timeout_ms));
    c.tls = tls_option(env, o.Get("tls"));
    events_ = Napi::ThreadSafeFunction::New(env, o.Get("onEvent").As<Napi::Function>(), "lazyd-lazy-pages", 0, 1);
    engine_ = std::make_unique<lazyd::FaultEngine>(std::move(c), [this](const lazyd::EngineEvent& e) { post(e); });
  }

  ~LazyPagesWrap() override {
    engine_.reset();
    if (!released_.exchange(true)) events_.Release();
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    int result = engine_->start();
    if (result < 0) {
      Napi::Error error = errno_error(info.Env(), result, engine_->error());
      throw error;
    }
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    engine_->stop();
    if (!released_.exchange(true)) events_.Release();
    return info.Env().Undefined();
  }

  Napi::Value SocketPath(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), engine_->socket_path()); }
  Napi::Value Error(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), engine_->error()); }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const lazyd::EngineStats s = engine_->stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("state", lazyd::engine_state_name(s.state));
    o.Set("summary", engine_summary_object(env, s.summary));
    o.Set("tasksTotal", uint64_value(env, s.tasks_total));
    o.Set("tasksActive", uint64_value(env, s.tasks_active));
    o.Set("pagesRemaining", uint64_value(env, s.pages_remaining));
    o.Set("pagesInFlight", uint64_value(env, s.pages_in_flight));
    o.Set("faultsWaiting", uint64_value(env, s.faults_waiting));
    o.Set("requests", uint64_value(env, s.requests));
    o.Set("requestsInFlight", uint64_value(env, s.requests_in_flight));
    o.Set("pagesDiscarded", uint64_value(env, s.pages_discarded));
    o.Set("tlsFailures", uint64_value(env, s.tls_failures));
    Napi::Array bounds = Napi::Array::New(env, lazyd::kLatencyBuckets);
    Napi::Array counts = Napi::Array::New(env, lazyd::kLatencyBuckets);
    for (size_t i = 0; i < lazyd::kLatencyBuckets; i++) {
      bounds.Set(i, lazyd::kLatencyBoundsUs[i] == UINT64_MAX ? Napi::Number::New(env, INFINITY)
                                                              : Napi::Number::New(env, double(lazyd::kLatencyBoundsUs[i])));
      counts.Set(i, uint64_value(env, s.latency_us[i]));
    }
    o.Set("latencyBoundsUs", bounds);
    o.Set("latencyCounts", counts);
    o.Set("latencySumUs", uint64_value(env, s.latency_sum_us));
    o.Set("latencyCount", uint64_value(env, s.latency_count));
    Napi::Object results = Napi::Object::New(env);
    for (size_t i = 0; i < lazyd::kFaultResults; i++) {
      results.Set(lazyd::fault_result_name(static_cast<lazyd::FaultResult>(i)), uint64_value(env, s.faults_by_result[i]));
    }
    o.Set("faultsByResult", results);
    o.Set("bytesSent", uint64_value(env, s.bytes_sent));
    return o;
  }

  void post(const lazyd::EngineEvent& event) {
    if (released_.load()) return;
    auto* copy = new lazyd::EngineEvent(event);
    const bool last = event.kind == lazyd::EngineEvent::Kind::kDone || event.kind == lazyd::EngineEvent::Kind::kFailed;
    events_.NonBlockingCall(copy, [](Napi::Env env, Napi::Function callback, lazyd::EngineEvent* data) {
      std::unique_ptr<lazyd::EngineEvent> owned(data);
      Napi::Object o = Napi::Object::New(env);
      o.Set("type", engine_event_name(owned->kind));
      o.Set("pid", owned->pid);
      o.Set("task", uint64_value(env, owned->task));
      o.Set("parentTask", uint64_value(env, owned->parent_task));
      o.Set("message", owned->message);
      o.Set("summary", engine_summary_object(env, owned->summary));
      callback.Call({o});
    });
    if (last && !released_.exchange(true)) events_.Release();
  }

  std::unique_ptr<lazyd::FaultEngine> engine_;
  Napi::ThreadSafeFunction events_;
  std::atomic<bool> released_{false};
};

Napi::Object Constants(Napi::Env env) {
  Napi::Object constants = Napi::Object::New(env);
  for (size_t i = 0; i < lazyd::wire::kConstantCount; i++) {
    constants.Set(lazyd::wire::kConstants[i].name, uint64_value(env, lazyd::wire::kConstants[i].value));
  }
  return constants;
}

// notify(socketPath, text): one sd_notify datagram (systemd Type=notify readiness and STATUS=).
Napi::Value Notify(const Napi::CallbackInfo& info) {
  const std::string path = info[0].As<Napi::String>();
  const std::string text = info[1].As<Napi::String>();
  const int rc = lazyd::sd_notify_send(path, text);
  if (rc < 0) throw errno_error(info.Env(), rc, "cannot notify " + path);
  return info.Env().Undefined();
}

// probeHost(): { uffd: { syscallErrno, deviceErrno, apiErrno, features, noncoopErrno, noncoopFeatures },
//   memfdErrno } for `lazyd check` (errno 0: it worked).
Napi::Value ProbeHost(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const lazyd::UffdProbe p = lazyd::probe_userfaultfd();
  Napi::Object uffd = Napi::Object::New(env);
  uffd.Set("syscallErrno", p.syscall_errno);
  uffd.Set("deviceErrno", p.device_errno);
  uffd.Set("apiErrno", p.api_errno);
  uffd.Set("features", uint64_value(env, p.features));
  uffd.Set("noncoopErrno", p.noncoop_errno);
  uffd.Set("noncoopFeatures", uint64_value(env, p.noncoop_features));
  Napi::Object out = Napi::Object::New(env);
  out.Set("uffd", uffd);
  out.Set("memfdErrno", -lazyd::probe_sealed_memfd());
  return out;
}

// detectFormat(bytes: Uint8Array, pageSize) -> 24 | 32 | 0: wire.cc detect(), for the property test that
// checks the TypeScript twin (src/protocol/wire.ts detectFormat) agrees with it.
Napi::Value DetectFormat(const Napi::CallbackInfo& info) {
  Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  const size_t page_size = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
  return Napi::Number::New(info.Env(), static_cast<int>(lazyd::wire::detect(bytes.Data(), bytes.ByteLength(), page_size)));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("PageServer", PageServerWrap::Define(env));
  exports.Set("LazyPages", LazyPagesWrap::Define(env));
  exports.Set("constants", Constants(env));
  exports.Set("notify", Napi::Function::New(env, Notify, "notify"));
  exports.Set("probeHost", Napi::Function::New(env, ProbeHost, "probeHost"));
  exports.Set("tlsCheck", Napi::Function::New(env, TlsCheck, "tlsCheck"));
  exports.Set("detectFormat", Napi::Function::New(env, DetectFormat));
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));
  return exports;
}

}  // namespace

NODE_API_MODULE(lazyd_native, Init)
