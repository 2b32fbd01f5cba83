// The fault engine's page source (lazy/page_client.h): the local pages images, or a page server reached over
// TCP — connected once every task is handed over (docs/protocol.md §4.2), as criu does. Under --tls the handshake
// runs step by step from the engine's epoll loop (on_socket), like the page server's side of it, so the restore's
// messages and the uffds keep being read while the server is slow to answer; deadlines bound it.
//
// On the lazyd link (docs/protocol.md §7), once the main connection is up (its HELLO still on the way):
//   - a second, priority connection to the same checkpoint (feature priority, §7.5) carries the demand faults and
//     their fault-around, so no drain byte is ever queued ahead of them; the drain stays on the main one. Each
//     connection's replies come in the order of its own requests. With a stock peer: one connection, FIFO.
//   - a connection that is cut (a reset, an EOF mid-session, or silence past --stall-timeout with requests
//     outstanding) is made again (feature resume, §7.6) without blocking the loop: a non-blocking connect, the
//     TLS handshake when the link has it, the same HELLO; then every request it had not answered is asked again.
//     Meanwhile requests for it wait. Not back within --reconnect-timeout: the engine fails (the failure policy).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lazy/engine/core.h"
#include "lazy/page_client.h"

namespace lazyd::engine {

class SourceLink {
 public:
  explicit SourceLink(EngineCore& core);
  SourceLink(const SourceLink&) = delete;
  SourceLink& operator=(const SourceLink&) = delete;

  // Local restores: the source, for the restore intake to add each task's runs to. Null for a remote one.
  LocalPageSource* prepare_local();
  // Every task is handed over: connect (remote) or just start (local). kSourceConnected once usable.
  void connect();
  // A socket of the link is ready (epoll tag kTagSource or kTagPriority). True when its replies may be read now
  // (pump()); false when the event was a step of connecting, taken here.
  bool on_socket(uint64_t tag);
  // The link's deadlines: connect and TLS handshake, the next reconnect attempt, --reconnect-timeout, silence.
  int next_timeout_ms(uint64_t now) const;  // -1: none
  void check_deadlines(uint64_t now);

  bool ready() const { return ready_; }  // requests may be submitted (during a reconnect they wait)
  // A connection is being made or made again, or a HELLO is unanswered: CLOSE must wait.
  bool connecting() const;
  // Ready, and it answers inside submit() (the local images).
  bool synchronous() const { return ready_ && local_ != nullptr; }

  // urgent: a demand fault or its fault-around (the priority connection when there is one).
  int submit(const PageRequest& request, bool urgent);
  // Between hold() and release() submit() queues without sending: a fault's GET and its fault-around's leave in
  // one segment, one send (each send through the bench's delay line, or on a busy host, costs a wake-up).
  void hold() { held_ = true; }
  int release();
  // Every connection's completed replies. < 0 only when the link failed for good (error() says why); a
  // connection cut on a resumable link is made again instead. The main connection is read kReadSliceBytes per
  // loop pass at most (new_pass()): what waits there is read in the passes after, each of which looks at the
  // uffds and the priority connection first.
  int pump(std::vector<PageReply>* done);
  // pump() in two halves: the priority connection's replies (a demand fault's is installed before the drain's
  // bytes are read), then the main connection's (or the local source's).
  int pump_priority(std::vector<PageReply>* done);
  int pump_main(std::vector<PageReply>* done);
  void new_pass() { main_read_left_ = kReadSliceBytes; }
  static constexpr size_t kReadSliceBytes = 128 * 1024;
  void update_interest();
  size_t in_flight() const;
  // ms the slowest connection that cannot be resumed has sent nothing with requests outstanding (else 0).
  int64_t stalled_ms() const;
  int close(int32_t* status);
  const std::string& error() const { return error_; }
  bool exists() const { return local_ != nullptr || main_.client != nullptr || main_.state != State::kOff; }
  uint64_t bytes_received() const;
  uint64_t bytes_sent() const;
  uint64_t checksum_mismatches() const;
  std::string last_checksum_mismatch() const { return last_mismatch_; }
  uint64_t reconnects() const { return reconnects_; }
  bool priority_up() const;  // demand faults go on the priority connection now

 private:
  enum class State { kOff, kConnecting, kHandshaking, kUp, kDown };
  struct Channel {
    const char* name = "";    // in messages: "" (the main connection) or " (priority connection)"
    uint64_t tag = 0;         // epoll tag
    uint64_t features = 0;    // its HELLO's (0: no HELLO, a stock peer)
    std::unique_ptr<PageClient> client;
    State state = State::kOff;
    bool wants_write = false;  // the socket's epoll interest includes EPOLLOUT
    uint64_t step_ns = 0;      // the connect or TLS handshake under way began
    bool resumable = false;    // a HELLO of this connection was granted feature resume
    std::vector<PageRequest> resend;  // asked again once the connection is up
    uint64_t outage_ns = 0;    // cut then, not back yet (0: no outage)
    std::string cut_reason;    // why it was cut first
    uint64_t retry_ns = 0;     // kDown: the next attempt
    int backoff_ms = 0;
    uint64_t asked_again = 0;  // requests re-sent in this outage
    // Carried over from the clients before a reconnect.
    uint64_t old_received = 0, old_sent = 0, old_mismatches = 0;
  };

  std::string peer() const;
  Channel& channel(uint64_t tag) { return tag == kTagPriority ? prio_ : main_; }
  void connected(const std::string& where);
  wire::Hello hello(uint64_t features, bool* ok);
  // Starts a (re)connect of ch without waiting: kConnecting, or kUp at once.
  void open(Channel& ch);
  void handshake_step(Channel& ch);
  // ch's TCP connection (and TLS) is up: its HELLO and the requests waiting for it go out.
  void up(Channel& ch);
  // ch's client failed. True when that is handled (a reconnect begins, or the priority connection is given up
  // and its requests go to the main one); false: the link failed (error_ says why).
  bool lost(Channel& ch);
  // The priority connection is not used any more: its unanswered requests go to the main one.
  void drop_priority(const std::string& why);
  void maybe_open_priority();
  void watch(Channel& ch, uint32_t events);
  int fail(Channel& ch);  // the link failed with ch's error
  // ch's completed replies into done: 0, 1 when ch went away (cut and reconnecting, or the priority connection
  // given up), < 0 when the link failed for good.
  int pump_channel(Channel& ch, std::vector<PageReply>* done);

  EngineCore& core_;
  std::unique_ptr<LocalPageSource> local_;
  Channel main_, prio_;
  bool ready_ = false;
  bool can_reconnect_ = false;  // an address to connect to (not only an adopted --ps-socket)
  bool priority_off_ = false;   // given up (or never wanted)
  bool closing_ = false;
  bool held_ = false;  // hold(): submit() queues
  uint64_t reconnects_ = 0;
  size_t main_read_left_ = kReadSliceBytes;  // of this loop pass
  std::string error_;
  std::string last_mismatch_;
  std::string last_error_of_[2];  // the last failure of main_, prio_ in an outage
};

}  // namespace lazyd::engine
