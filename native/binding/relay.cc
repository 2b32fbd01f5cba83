// Relay staging on the PageServer class: startRelay (native/core/staging/relay.h).
#include <unistd.h>

#include <string>
#include <vector>

#include "binding/convert.h"
#include "binding/page_server.h"
#include "binding/tls_check.h"
#include "staging/relay.h"

namespace lazyd::binding {
namespace {

uint64_t bigint_u64(Napi::Env env, Napi::Value value, const std::string& what) {
  if (value.IsBigInt()) {
    bool lossless = true;
    const uint64_t v = value.As<Napi::BigInt>().Uint64Value(&lossless);
    if (lossless) return v;
  } else if (value.IsNumber()) {
    const double d = value.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 9007199254740991.0 && d == static_cast<double>(static_cast<uint64_t>(d))) return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(env, "startRelay: " + what + " must be a non-negative integer (bigint)");
}

std::vector<lazyd::RelayTask> relay_tasks(Napi::Env env, Napi::Value value) {
  if (!value.IsArray()) throw Napi::TypeError::New(env, "startRelay: option tasks must be an array");
  Napi::Array array = value.As<Napi::Array>();
  std::vector<lazyd::RelayTask> tasks;
  for (uint32_t i = 0; i < array.Length(); i++) {
    Napi::Value item = array.Get(i);
    if (!item.IsObject()) throw Napi::TypeError::New(env, "startRelay: tasks[" + std::to_string(i) + "] must be an object");
    Napi::Object task = item.As<Napi::Object>();
    lazyd::RelayTask out;
    out.pid = bigint_u64(env, task.Get("pid"), "tasks[" + std::to_string(i) + "].pid");
    Napi::Value ranges = task.Get("ranges");
    if (!ranges.IsArray()) throw Napi::TypeError::New(env, "startRelay: tasks[" + std::to_string(i) + "].ranges must be an array");
    Napi::Array list = ranges.As<Napi::Array>();
    for (uint32_t r = 0; r < list.Length(); r++) {
      Napi::Value range = list.Get(r);
      const std::string name = "tasks[" + std::to_string(i) + "].ranges[" + std::to_string(r) + "]";
      if (!range.IsObject()) throw Napi::TypeError::New(env, "startRelay: " + name + " must be an object");
      Napi::Object object = range.As<Napi::Object>();
      out.ranges.push_back(lazyd::RelayRange{bigint_u64(env, object.Get("vaddr"), name + ".vaddr"),
                                             bigint_u64(env, object.Get("nrPages"), name + ".nrPages")});
    }
    tasks.push_back(std::move(out));
  }
  return tasks;
}

}  // namespace

// startRelay({ host, port, connectTimeoutMs, format, tls, tasks, requestPages, inflightBytes, stallTimeoutMs,
// holdClose? }):
// connects to the dump's lazy page server and starts pulling on the server's thread. Returns { checkpoint, token }:
// the checkpoint id and its link token (32 hex digits for lazyd-link.json, docs/protocol.md §7; "" when none could
// be drawn); throws one line when it cannot start (after resetting a connection it made: the dump resumes the
// tasks).
Napi::Value PageServerWrap::StartRelay(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "startRelay: expected an options object");
  if (!server_) throw Napi::Error::New(env, "startRelay before listen and start");
  Napi::Object options = info[0].As<Napi::Object>();
  auto number = [&](const char* name) { return required_number(env, options, "startRelay", name); };
  lazyd::RelayOptions o;
  Napi::Value host = required_option(env, options, "startRelay", "host");
  if (!host.IsString()) throw Napi::TypeError::New(env, "startRelay: option host must be a string");
  o.host = host.As<Napi::String>().Utf8Value();
  const double port = number("port");
  if (port < 1 || port > 65535) throw Napi::TypeError::New(env, "startRelay: option port must be 1..65535");
  o.port = static_cast<uint16_t>(port);
  o.connect_timeout_ms = static_cast<int>(number("connectTimeoutMs"));
  const int format = static_cast<int>(number("format"));
  if (format != 24 && format != 32) throw Napi::TypeError::New(env, "startRelay: option format must be 24 or 32");
  o.format = format == 24 ? lazyd::wire::Format::V24 : lazyd::wire::Format::V32;
  o.tls = tls_option(env, options.Get("tls"));
  o.tasks = relay_tasks(env, required_option(env, options, "startRelay", "tasks"));
  o.request_pages = static_cast<uint64_t>(number("requestPages"));
  o.inflight_bytes = static_cast<uint64_t>(number("inflightBytes"));
  o.stall_timeout_ms = static_cast<int>(number("stallTimeoutMs"));
  Napi::Value hold = options.Get("holdClose");
  if (!hold.IsUndefined() && !hold.IsBoolean()) throw Napi::TypeError::New(env, "startRelay: option holdClose must be a boolean");
  o.hold_close = hold.IsBoolean() && hold.As<Napi::Boolean>().Value();
  o.page_size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  o.budget = server_->staging().budget();
  std::string error;
  int err = 0;
  std::unique_ptr<lazyd::Relay> relay = lazyd::Relay::start(std::move(o), &error, &err);
  if (!relay) {
    Napi::Error e = Napi::Error::New(env, error);
    e.Set("code", err == -EDQUOT ? "ECAP" : err == -ECONNREFUSED ? "ECONNREFUSED" : err == -ETIMEDOUT ? "ETIMEDOUT" : "ERELAY");
    throw e;
  }
  std::string token;
  const uint64_t id = server_->start_relay(std::move(relay), &error, &token);
  if (id == 0) {
    Napi::Error e = Napi::Error::New(env, error);
    e.Set("code", "ERELAY");
    throw e;
  }
  Napi::Object started = Napi::Object::New(env);
  started.Set("checkpoint", uint64_value(env, id));
  started.Set("token", Napi::String::New(env, token));
  return started;
}

// releaseRelay(checkpoint): a relay started with holdClose sends its CLOSE to the dump (now, or once every page is
// held); its end comes as relay-done / relay-failed. A relay that has ended already is left alone.
Napi::Value PageServerWrap::ReleaseRelay(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "releaseRelay: expected a checkpoint id");
  if (server_) server_->release_relay(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
  return env.Undefined();
}

}  // namespace lazyd::binding
