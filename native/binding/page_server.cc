#include "binding/page_server.h"

#include <unistd.h>

#include <string>
#include <vector>

#include "binding/convert.h"
#include "binding/exports.h"
#include "binding/tls_check.h"

namespace lazyd::binding {
namespace {

Napi::Object session_stats_object(Napi::Env env, const lazyd::SessionStats& stats) {
  Napi::Object object = Napi::Object::New(env);
  object.Set("gets", uint64_value(env, stats.gets));
  object.Set("pages", uint64_value(env, stats.pages));
  object.Set("bytesOut", uint64_value(env, stats.bytes_out));
  object.Set("closedByRequest", Napi::Boolean::New(env, stats.closed_by_request));
  object.Set("hello", Napi::Boolean::New(env, stats.hello));
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
    case lazyd::ServerEvent::Kind::kRelayProgress: return "relay-progress";
    case lazyd::ServerEvent::Kind::kRelayDone: return "relay-done";
    case lazyd::ServerEvent::Kind::kRelayFailed: return "relay-failed";
  }
  return "?";
}

// The `access` option (--allow-from & co): {fetchFrom, uploadFrom, fetchNames, uploadNames}, arrays of strings;
// the CIDR blocks are checked by the flags already, so a bad one here is a caller's bug (a TypeError).
lazyd::AccessPolicy access_option(Napi::Env env, Napi::Value value) {
  if (!value.IsObject()) throw Napi::TypeError::New(env, "PageServer: option access must be an object");
  Napi::Object o = value.As<Napi::Object>();
  auto strings = [&](const char* name) {
    Napi::Value v = o.Get(name);
    if (!v.IsArray()) throw Napi::TypeError::New(env, std::string("PageServer: option access.") + name + " must be an array");
    Napi::Array array = v.As<Napi::Array>();
    std::vector<std::string> out;
    for (uint32_t i = 0; i < array.Length(); i++) out.push_back(array.Get(i).ToString().Utf8Value());
    return out;
  };
  auto blocks = [&](const char* name) {
    std::vector<lazyd::Cidr> out;
    for (const std::string& text : strings(name)) {
      lazyd::Cidr cidr;
      std::string error;
      if (!lazyd::parse_cidr(text, &cidr, &error)) throw Napi::TypeError::New(env, std::string("PageServer: access.") + name + ": " + error);
      out.push_back(cidr);
    }
    return out;
  };
  lazyd::AccessPolicy policy;
  policy.fetch_from = blocks("fetchFrom");
  policy.upload_from = blocks("uploadFrom");
  policy.fetch_names = strings("fetchNames");
  policy.upload_names = strings("uploadNames");
  return policy;
}

}  // namespace

Napi::Function PageServerWrap::Define(Napi::Env env) {
  return DefineClass(env, "PageServer",
                     {InstanceMethod("addFile", &PageServerWrap::AddFile),
                      InstanceMethod("addTask", &PageServerWrap::AddTask),
                      InstanceMethod("listen", &PageServerWrap::Listen),
                      InstanceMethod("start", &PageServerWrap::Start),
                      InstanceMethod("stop", &PageServerWrap::Stop),
                      InstanceMethod("stats", &PageServerWrap::Stats),
                      InstanceMethod("writePages", &PageServerWrap::WritePages),
                      InstanceMethod("ackUpload", &PageServerWrap::AckUpload),
                      InstanceMethod("release", &PageServerWrap::Release),
                      InstanceMethod("startRelay", &PageServerWrap::StartRelay),
                      InstanceMethod("releaseRelay", &PageServerWrap::ReleaseRelay)});
}

Napi::Function define_page_server(Napi::Env env) { return PageServerWrap::Define(env); }

PageServerWrap::PageServerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PageServerWrap>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "PageServer: expected an options object");
  Napi::Object options = info[0].As<Napi::Object>();
  auto number = [&](const char* name) { return required_number(env, options, "PageServer", name); };
  auto boolean = [&](const char* name) { return required_boolean(env, options, "PageServer", name); };
  const int format = static_cast<int>(number("format"));
  if (format != 0 && format != 24 && format != 32) throw Napi::TypeError::New(env, "PageServer: option format must be 0, 24 or 32");
  config_.session.format = format == 24   ? lazyd::wire::Format::V24
                           : format == 32 ? lazyd::wire::Format::V32
                                          : lazyd::wire::Format::Unknown;
  config_.session.max_request_pages = static_cast<uint64_t>(number("maxRequestPages"));
  config_.session.max_queued_replies = static_cast<size_t>(number("maxInflight"));
  config_.single_session = boolean("singleSession");
  config_.max_sessions = static_cast<size_t>(number("maxSessions"));
  config_.stall_timeout_ms = static_cast<int>(number("stallTimeoutMs"));
  config_.idle_timeout_ms = static_cast<int>(number("idleTimeoutMs"));
  config_.session.max_queued_bytes = static_cast<uint64_t>(number("maxSessionBytes"));
  config_.session.require_link_token = boolean("requireLinkToken");
  config_.accept_uploads = boolean("staging");
  config_.staging_max_bytes = static_cast<uint64_t>(number("stagingMaxBytes"));
  config_.staging_restores = static_cast<uint64_t>(number("stagingRestores"));
  config_.link_resume_hold_ms = static_cast<int>(number("linkResumeHoldMs"));
  config_.upload.format = config_.session.format;
  config_.tls = tls_option(env, required_option(env, options, "PageServer", "tls"));
  config_.tls_handshake_timeout_ms = static_cast<int>(number("tlsHandshakeTimeoutMs"));
  config_.access = access_option(env, required_option(env, options, "PageServer", "access"));
  index_ = std::make_shared<lazyd::PageIndex>(static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  events_ = Napi::ThreadSafeFunction::New(env, options.Get("onEvent").As<Napi::Function>(), "lazyd-page-server",
                                          0, 1);
}

PageServerWrap::~PageServerWrap() {
  server_.reset();
  if (!released_) events_.Release();
}

Napi::Value PageServerWrap::AddFile(const Napi::CallbackInfo& info) {
  const std::string path = info[0].As<Napi::String>();
  if (server_) throw Napi::Error::New(info.Env(), "addFile after start");
  int index = index_->add_file(path);
  if (index < 0) throw errno_error(info.Env(), index, "cannot open " + path);
  return Napi::Number::New(info.Env(), index);
}


// addTask(pid, runs: BigUint64Array of [vaddr, nrPages, flags, fileIndex (2^64-1: none), fileOffset] * n)
Napi::Value PageServerWrap::AddTask(const Napi::CallbackInfo& info) {
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


Napi::Value PageServerWrap::Listen(const Napi::CallbackInfo& info) {
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


Napi::Value PageServerWrap::Start(const Napi::CallbackInfo& info) {
  if (!server_) throw Napi::Error::New(info.Env(), "start before listen");
  int result = server_->start();
  if (result < 0) throw errno_error(info.Env(), result, "cannot start the page server thread");
  return info.Env().Undefined();
}


Napi::Value PageServerWrap::Stop(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "PageServer.stop: drainMs (--drain-timeout) must be a number");
  const int drain_ms = info[0].As<Napi::Number>().Int32Value();
  if (server_) server_->request_stop(drain_ms);
  return info.Env().Undefined();
}


Napi::Value PageServerWrap::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object object = Napi::Object::New(env);
  if (!server_) return object;
  const lazyd::ServerStats s = server_->stats();
  object.Set("sessionsTotal", uint64_value(env, s.sessions_total));
  object.Set("sessionsActive", uint64_value(env, s.sessions_active));
  object.Set("sessionsFailed", uint64_value(env, s.sessions_failed));
  object.Set("getsTotal", uint64_value(env, s.gets_total));
  object.Set("pagesTotal", uint64_value(env, s.pages_total));
  object.Set("bytesTotal", uint64_value(env, s.bytes_total));
  object.Set("bytesReceived", uint64_value(env, s.bytes_received));
  object.Set("tlsFailures", uint64_value(env, s.tls_failures));
  object.Set("accessRefused", uint64_value(env, s.access_refused));
  object.Set("requestsInFlight", uint64_value(env, s.requests_in_flight));
  object.Set("stagingBytes", uint64_value(env, s.staging_bytes));
  object.Set("stagingMaxBytes", uint64_value(env, s.staging_max_bytes));
  return object;
}

void PageServerWrap::post(const lazyd::ServerEvent& event) {
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
    if (!owned->token.empty()) object.Set("token", owned->token);
    object.Set("restores", uint64_value(env, owned->restores));
    object.Set("memoryUsed", uint64_value(env, owned->memory_used));
    object.Set("pagesHeld", uint64_value(env, owned->pages_held));
    object.Set("pagesTotal", uint64_value(env, owned->pages_total));
    object.Set("bytes", uint64_value(env, owned->bytes));
    object.Set("ms", uint64_value(env, owned->ms));
    object.Set("demandRequests", uint64_value(env, owned->demand_requests));
    object.Set("bulkRequests", uint64_value(env, owned->bulk_requests));
    object.Set("shortReplies", uint64_value(env, owned->short_replies));
    object.Set("bytesCopied", uint64_value(env, owned->bytes_copied));
    if (owned->store) {
      object.Set("pagemaps", store_pagemaps(env, *owned->store));
      object.Set("bytesHeld", uint64_value(env, owned->store->bytes_held()));
    }
    callback.Call({object});
  });
  if (last) {
    // The thread ends right after this event: let Node exit once the queue is drained.
    events_.Release();
    released_ = true;
  }
}

}  // namespace lazyd::binding
