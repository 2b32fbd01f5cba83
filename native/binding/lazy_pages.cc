#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "binding/convert.h"
#include "binding/exports.h"
#include "binding/tls_check.h"
#include "lazy/fault_engine.h"

namespace lazyd::binding {
namespace {

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

std::vector<lazyd::FaultEngineConfig::Task> tasks_option(Napi::Env env, Napi::Value value) {
  if (!value.IsArray()) throw Napi::TypeError::New(env, "LazyPages: option tasks must be an array");
  Napi::Array tasks = value.As<Napi::Array>();
  std::vector<lazyd::FaultEngineConfig::Task> out;
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
    out.push_back(std::move(task));
  }
  return out;
}

lazyd::wire::Format format_option(Napi::Env env, double format) {
  if (format != 24 && format != 32) throw Napi::TypeError::New(env, "LazyPages: option format must be 24 or 32");
  return format == 32 ? lazyd::wire::Format::V32 : lazyd::wire::Format::V24;
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
  o.Set("copyBytes", uint64_value(env, s.copy_bytes));
  o.Set("copyNs", uint64_value(env, s.copy_ns));
  o.Set("seconds", s.seconds);
  return o;
}

// new LazyPages({ workDir, nrTasks, tasks: [{ pid, runs: BigUint64Array [imgStart, nrPages, fd|2^64-1, offset]* }],
//   source: 'local' | 'remote', address, port (remote), format, faultAroundBytes, drainMinBytes, drainMaxBytes,
//   drainInflightBytes, drainInflightMaxBytes, drainInflightBytesFaulting, drainRate, background, drainStartMs, linkChecksum,
//   linkPriority, reconnectTimeoutMs, maxRequestsInflight, rstfTimeoutMs, stallTimeoutMs, tls, onEvent }): every key required (tls: undefined for
//   plain TCP); optional, not flags (the engine's own values): acceptTimeoutMs, handoverTimeoutMs,
//   connectTimeoutMs, closeTimeoutMs.
// deferTasks: true: nrTasks, tasks and format are left out and given later by setTasks({ nrTasks, tasks,
//   format }) (after start(); the engine emits restore-connected and waits for them).
class LazyPagesWrap : public Napi::ObjectWrap<LazyPagesWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "LazyPages",
                       {InstanceMethod("start", &LazyPagesWrap::Start), InstanceMethod("stop", &LazyPagesWrap::Stop),
                        InstanceMethod("setTasks", &LazyPagesWrap::SetTasks),
                        InstanceMethod("stats", &LazyPagesWrap::Stats),
                        InstanceMethod("socketPath", &LazyPagesWrap::SocketPath),
                        InstanceMethod("error", &LazyPagesWrap::Error)});
  }

  explicit LazyPagesWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LazyPagesWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "LazyPages: expected an options object");
    Napi::Object o = info[0].As<Napi::Object>();
    auto required = [&](const char* name) { return required_number(env, o, "LazyPages", name); };
    auto number = [&](const char* name, double fallback) {
      Napi::Value v = o.Get(name);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
    };
    lazyd::FaultEngineConfig c;
    c.work_dir = o.Get("workDir").As<Napi::String>();
    c.defer_tasks = o.Get("deferTasks").IsBoolean() && o.Get("deferTasks").ToBoolean();
    if (!c.defer_tasks) {
      c.nr_tasks = static_cast<size_t>(required("nrTasks"));
      c.tasks = tasks_option(env, o.Get("tasks"));
    }
    const std::string source = o.Get("source").ToString();
    c.source = source == "remote" ? lazyd::FaultEngineConfig::Source::kRemote : lazyd::FaultEngineConfig::Source::kLocal;
    if (c.source == lazyd::FaultEngineConfig::Source::kRemote) {
      Napi::Value address = required_option(env, o, "LazyPages", "address");
      if (!address.IsString()) throw Napi::TypeError::New(env, "LazyPages: option address must be a string (source remote)");
      c.address = address.As<Napi::String>();
      c.port = static_cast<uint16_t>(required("port"));
    }
    if (!c.defer_tasks) c.format = format_option(env, required("format"));
    c.fault_around_bytes = static_cast<uint64_t>(required("faultAroundBytes"));
    c.bg_min_bytes = static_cast<uint64_t>(required("drainMinBytes"));
    c.bg_max_bytes = static_cast<uint64_t>(required("drainMaxBytes"));
    c.bg_in_flight_bytes = static_cast<uint64_t>(required("drainInflightBytes"));
    c.bg_in_flight_bytes_faulting = static_cast<uint64_t>(required("drainInflightBytesFaulting"));
    c.bg_in_flight_max_bytes = static_cast<uint64_t>(required("drainInflightMaxBytes"));
    c.bg_rate_bytes = static_cast<uint64_t>(required("drainRate"));
    c.max_requests_in_flight = static_cast<size_t>(required("maxRequestsInflight"));
    Napi::Value background = required_option(env, o, "LazyPages", "background");
    if (!background.IsBoolean()) throw Napi::TypeError::New(env, "LazyPages: option background must be a boolean");
    c.background = background.ToBoolean();
    c.drain_start_ms = static_cast<int>(required("drainStartMs"));
    Napi::Value link_checksum = required_option(env, o, "LazyPages", "linkChecksum");
    if (!link_checksum.IsBoolean()) throw Napi::TypeError::New(env, "LazyPages: option linkChecksum must be a boolean");
    c.link_checksum = link_checksum.ToBoolean();
    Napi::Value link_priority = required_option(env, o, "LazyPages", "linkPriority");
    if (!link_priority.IsBoolean()) throw Napi::TypeError::New(env, "LazyPages: option linkPriority must be a boolean");
    c.link_priority = link_priority.ToBoolean();
    c.reconnect_timeout_ms = static_cast<int>(required("reconnectTimeoutMs"));
    c.accept_timeout_ms = static_cast<int>(number("acceptTimeoutMs", c.accept_timeout_ms));
    c.handover_timeout_ms = static_cast<int>(number("handoverTimeoutMs", c.handover_timeout_ms));
    c.rstf_timeout_ms = static_cast<int>(required("rstfTimeoutMs"));
    c.connect_timeout_ms = static_cast<int>(number("connectTimeoutMs", c.connect_timeout_ms));
    c.stall_timeout_ms = static_cast<int>(required("stallTimeoutMs"));
    c.close_timeout_ms = static_cast<int>(number("closeTimeoutMs", c.close_timeout_ms));
    c.tls = tls_option(env, required_option(env, o, "LazyPages", "tls"));
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

  Napi::Value SetTasks(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "LazyPages.setTasks: expected { nrTasks, tasks, format }");
    Napi::Object o = info[0].As<Napi::Object>();
    const size_t nr_tasks = static_cast<size_t>(required_number(env, o, "LazyPages.setTasks", "nrTasks"));
    auto tasks = tasks_option(env, o.Get("tasks"));
    const lazyd::wire::Format format = format_option(env, required_number(env, o, "LazyPages.setTasks", "format"));
    std::string link_token;  // lazyd-link.json's token (docs/protocol.md §7); absent: a stock CRIU page server
    if (o.Has("linkToken") && o.Get("linkToken").IsString()) link_token = o.Get("linkToken").As<Napi::String>();
    int result = engine_->set_tasks(nr_tasks, std::move(tasks), format, std::move(link_token));
    if (result < 0) throw errno_error(env, result, "LazyPages.setTasks: the engine was not started with deferTasks, or tasks were given already");
    return env.Undefined();
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
    o.Set("checksumMismatches", uint64_value(env, s.checksum_mismatches));
    o.Set("reconnects", uint64_value(env, s.reconnects));
    o.Set("installSlices", uint64_value(env, s.install_slices));
    o.Set("faultsReasked", uint64_value(env, s.faults_reasked));
    o.Set("drainWindowBytes", uint64_value(env, s.bg_window_bytes));
    o.Set("drainInflightBytes", uint64_value(env, s.bg_bytes_in_flight));
    o.Set("drainRequestedBytes", uint64_value(env, s.bytes_background));
    o.Set("linkRttUs", uint64_value(env, s.link_rtt_us));
    o.Set("linkBandwidth", uint64_value(env, s.link_bandwidth_bps));
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
    o.Set("latencyP50Us", uint64_value(env, s.latency_p50_us));
    o.Set("latencyP99Us", uint64_value(env, s.latency_p99_us));
    o.Set("latencyMaxUs", uint64_value(env, s.latency_max_us));
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

}  // namespace

Napi::Function define_lazy_pages(Napi::Env env) { return LazyPagesWrap::Define(env); }

}  // namespace lazyd::binding
