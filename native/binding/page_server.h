// The PageServer class of the addon: the page server (native/core/server/page_server.h) for the control plane.
// page_server.cc holds the options, the index, the life cycle, stats and events; staging.cc the staging methods
// (writePages, ackUpload, release) and the staging fields of events; relay.cc relay staging (startRelay).
#pragma once

#include <napi.h>

#include <memory>

#include "server/page_index.h"
#include "server/page_server.h"

namespace lazyd::binding {

// new PageServer({ format, maxRequestPages, maxInflight, maxSessionBytes, singleSession, maxSessions,
//   stallTimeoutMs, idleTimeoutMs, staging, stagingMaxBytes, stagingRestores, tls, tlsHandshakeTimeoutMs,
//   onEvent }): every key required (tls: undefined for plain TCP).
class PageServerWrap : public Napi::ObjectWrap<PageServerWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit PageServerWrap(const Napi::CallbackInfo& info);
  ~PageServerWrap() override;

 private:
  // page_server.cc
  Napi::Value AddFile(const Napi::CallbackInfo& info);
  Napi::Value AddTask(const Napi::CallbackInfo& info);
  Napi::Value Listen(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  // Called on the server thread: copy the event and queue it for the JavaScript thread.
  void post(const lazyd::ServerEvent& event);
  // staging.cc
  Napi::Value WritePages(const Napi::CallbackInfo& info);
  Napi::Value AckUpload(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  // relay.cc
  Napi::Value StartRelay(const Napi::CallbackInfo& info);
  Napi::Value ReleaseRelay(const Napi::CallbackInfo& info);

  lazyd::PageServerConfig config_;
  std::shared_ptr<lazyd::PageIndex> index_;
  std::unique_ptr<lazyd::PageServer> server_;
  Napi::ThreadSafeFunction events_;
  bool released_ = false;
};

// staging.cc: the upload fields of events.
Napi::Object upload_stats_object(Napi::Env env, const lazyd::UploadStats& stats);
Napi::Array store_pagemaps(Napi::Env env, const lazyd::PageStore& store);

}  // namespace lazyd::binding
