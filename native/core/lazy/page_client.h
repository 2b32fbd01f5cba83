// Where the lazy daemon gets page contents from, behind one small interface (PageSource):
//   PageClient       a TCP client of a page server (lazyd's, `criu page-server --lazy-pages` or
//                    `criu dump --lazy-pages --port`): pipelined GETs, replies strictly FIFO (docs/protocol.md §1.6);
//   LocalPageSource  pread from the local pages-*.img (local lazy restore, §4.5).
// Neither knows about epoll: the engine watches fd() and calls pump().
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <sys/types.h>
#include <unordered_map>
#include <vector>

#include "net/tls_session.h"
#include "wire/link_ext.h"
#include "wire/wire.h"

namespace lazyd {

// Where the page bytes of a sink request go. Both calls return the bytes taken (> 0), or -errno with *error one
// line when the sink itself failed; take_from() also returns 0 when the socket reached EOF and -EAGAIN when it
// has nothing now.
class PageSink {
 public:
  virtual ~PageSink() = default;
  // Moves at most want bytes from the socket (O_NONBLOCK) to position at; never more: the next reply's header
  // stays in the socket.
  virtual ssize_t take_from(int socket_fd, uint64_t at, size_t want, std::string* error) = 0;
  // Bytes already in user space (TLS): takes all len of them, or fails.
  virtual ssize_t put(const void* bytes, size_t len, uint64_t at, std::string* error) = 0;
};

struct PageRequest {
  uint64_t cookie = 0;     // the caller's tag, handed back with the reply
  uint64_t pid = 0;        // the image (dump-time) pid: GET's dst_id (§1.4: the bare pid, no type byte)
  uint64_t img_vaddr = 0;  // page-aligned address at dump time
  uint64_t nr_pages = 0;
  uint8_t* buf = nullptr;  // nr_pages * page_size bytes; must stay valid until the reply is returned
  // Instead of buf (PageClient only): the page bytes go to this sink at position sink_offset (relay staging's
  // store, staging/relay_store.h): over plain TCP straight from the socket (the sink splices them), under TLS
  // from a small buffer.
  PageSink* sink = nullptr;
  uint64_t sink_offset = 0;
};

struct PageReply {
  uint64_t cookie = 0;
  uint64_t img_vaddr = 0;
  uint64_t nr_pages = 0;       // N' <= requested: the server clamps at the end of its run (§1.6)
  uint64_t requested_pages = 0;
  uint8_t* buf = nullptr;      // the request's buffer, holding N' pages (null for a sink request)
};

class PageSource {
 public:
  virtual ~PageSource() = default;
  // The fd to watch (EPOLLIN, plus EPOLLOUT while wants_write()); -1 when replies are ready right after submit().
  virtual int fd() const = 0;
  virtual bool wants_write() const { return false; }
  // Queues (and starts sending) one request. 0 or -errno (error() says why; the source is then unusable).
  virtual int submit(const PageRequest& request) = 0;
  // Sends pending output, reads what has arrived, appends completed replies in request order (a reply whose
  // pages failed their checksum comes later, once re-fetched). 0 or -errno.
  virtual int pump(std::vector<PageReply>* done) = 0;
  virtual size_t in_flight() const = 0;
  // While requests are outstanding: ms since the last byte arrived (or since the first request was sent). Else 0.
  virtual int64_t stalled_ms() const { return 0; }
  // Ends the session (a page server gets CLOSE and answers with an int32 status, §1.6). Only with nothing in
  // flight (-EBUSY otherwise). Returns 0 or -errno; *status gets the server's status. After an error it sends
  // nothing and just drops the connection (-EPIPE): a CLOSE would tell a criu source that all went well (§6.18).
  virtual int close(int timeout_ms, int32_t* status) = 0;
  virtual uint64_t bytes_received() const = 0;
  virtual uint64_t bytes_sent() const { return 0; }
  // Feature checksum (docs/protocol.md §7.4): pages that failed their checksum so far, and a line about the last.
  virtual uint64_t checksum_mismatches() const { return 0; }
  virtual std::string last_checksum_mismatch() const { return ""; }
  virtual const std::string& error() const = 0;
  virtual const char* kind() const = 0;
};

class PageClient : public PageSource {
 public:
  PageClient(wire::Format format, uint64_t page_size);
  ~PageClient() override;
  PageClient(const PageClient&) = delete;
  PageClient& operator=(const PageClient&) = delete;

  // Resolves host with getaddrinfo (IPv4/IPv6, names allowed, like criu's client §1.1) and tries each address
  // until one connects within timeout_ms in total. Sets TCP_NODELAY and O_NONBLOCK. 0 or -errno.
  // The connection ends with a FIN only after the server answered our CLOSE (or, with close_complete(), once
  // CLOSE is sent by a caller that holds every page); every other end (an error, the destructor, this process
  // dying) is a reset: `criu dump --lazy-pages` takes an EOF at a header boundary for a
  // finished transfer and kills the original tasks, while a reset fails the dump and resumes them (§1.7).
  int connect(const std::string& host, uint16_t port, int timeout_ms);
  // connect() for an event loop: starts a non-blocking connect to the first address of host. 0 once connected,
  // -EINPROGRESS (watch fd() for EPOLLOUT, then call connect_finish()), or -errno (error() says why).
  int connect_start(const std::string& host, uint16_t port);
  // fd() is writable after -EINPROGRESS: 0 when the connection is up, else -errno (error() says why).
  int connect_finish();
  // Uses an already-connected socket (criu's --ps-socket). Takes ownership.
  int adopt(int fd);
  // --tls (§1.9): begins the TLS handshake over the connected socket (the server's certificate is checked inside
  // it); peer ("host:port") names the server in messages. Then call tls_handshake() each time the socket is ready
  // for what tls_wants_write() says, until it returns 0: the caller's event loop drives it, nothing here waits.
  // From then on every byte goes through TLS, each GET header in a record of its own. 0 or -errno.
  int start_tls(std::shared_ptr<const TlsContext> context, const std::string& peer);
  // One step: 0 once established, -EAGAIN (wait for the socket), or -EPROTO (error() says why).
  int tls_handshake();
  bool tls_wants_write() const { return tls_ && tls_->handshake_wants_write(); }
  // The caller's deadline for the handshake passed: the client fails with the message saying what to check.
  int tls_timed_out(int timeout_ms);
  // "TLS1.3-..." once the handshake is done, else "".
  std::string tls_description() const { return tls_ ? tls_->description() : std::string(); }

  // lazyd peers only (docs/protocol.md §7): the session opens with this HELLO, sent ahead of every GET (after the
  // TLS handshake under --tls); its reply is read ahead of the first GET's. A refusing reply fails the client
  // with the server's reason. Call once, after connecting and before the first submit(). Never for a stock peer.
  void open_with_hello(const wire::Hello& hello);
  // The HELLO was answered and granted: the checkpoint the session is bound to (0 before, or without HELLO).
  uint64_t link_checkpoint() const { return link_checkpoint_; }
  // The server granted feature checksum: each reply's pages are checked before pump() hands the reply on; the
  // pages that fail are asked for again, once; failing again fails the client (-EBADMSG). Buffer requests only.
  bool checksums() const { return checksums_; }
  // The HELLO was answered and granted (features: what the server granted).
  bool hello_granted() const { return hello_granted_; }
  uint64_t granted_features() const { return granted_features_; }
  bool hello_pending() const { return hello_awaiting_; }

  // The client failed because the connection went away (reset, EOF mid-session, a send that hit a closed socket,
  // a transport error under TLS, or lost()): the server may be reached again (feature resume, docs/protocol.md
  // §7.6). False for what asking again cannot mend (a refused HELLO, a reply out of order, a checksum failing twice).
  bool link_lost() const { return link_lost_; }
  // The caller gave up on the connection (it stayed silent too long): the client fails as link_lost().
  void lost(std::string why);
  // Every request not answered yet, in the order asked, each as the caller submitted it (a reply held back for a
  // checksum re-fetch is asked again whole); the client forgets them. For asking them again on a new connection.
  std::vector<PageRequest> take_unanswered();
  // A connection that replaces a cut one: its messages do not guess at a TLS mismatch when nothing came back.
  void set_reconnected() { reconnected_ = true; }

  // The reply bytes the next pump() reads at most (it stops at the first read past the limit; the rest stays in
  // the socket, which stays readable). SIZE_MAX, the default: until the socket is empty. Ignored under TLS, whose
  // decrypted but unread bytes would not make the socket readable again.
  void set_read_limit(size_t bytes) { read_limit_ = bytes; }

  int fd() const override { return fd_; }
  bool wants_write() const override { return hello_off_ < hello_out_.size() || out_off_ < out_.size(); }
  int submit(const PageRequest& request) override;
  // submit() without the send: the request waits in the output for send_queued() (or the next submit or pump).
  int queue(const PageRequest& request);
  int send_queued() { return flush(); }
  int pump(std::vector<PageReply>* done) override;
  size_t in_flight() const override { return fifo_.size(); }
  int64_t stalled_ms() const override;
  int close(int timeout_ms, int32_t* status) override;
  // close() for a caller that holds every page it will ever ask for (relay staging, staging/relay.h): over plain
  // TCP the FIN follows the CLOSE at once instead of after its answer. `criu dump --lazy-pages` corks its socket
  // and writes the answer without a push, so it sits in its send queue until the 200 ms cork timer fires or the
  // dump closes the socket, which it does on our EOF (docs/protocol.md §1.7); the tasks stay frozen meanwhile.
  // Under TLS our close_notify and FIN follow the CLOSE record the same way.
  int close_complete(int timeout_ms, int32_t* status);
  // close_complete() for an event loop, plain TCP only: begin_close() sends CLOSE and our FIN (as far as the
  // socket takes them: keep watching fd() for wants_write()), poll_close() reads the answer once fd() is ready:
  // 0 with *status (the socket is then closed), -EAGAIN, or -errno (error() says why). Both 0 or -errno.
  int begin_close();
  int poll_close(int32_t* status);
  uint64_t bytes_received() const override { return bytes_received_; }
  uint64_t bytes_sent() const override { return bytes_sent_; }
  uint64_t checksum_mismatches() const override { return checksum_mismatches_; }
  std::string last_checksum_mismatch() const override { return last_mismatch_; }
  const std::string& error() const override { return error_; }
  const char* kind() const override { return "page-server"; }

  wire::Format format() const { return format_; }

 private:
  int fail(int err, std::string message);
  int fail_lost(int err, std::string message);  // fail(), as link_lost()
  int connected_socket();                        // TCP_NODELAY, reset on close
  // Through TLS when started, else the socket: bytes, 0 at EOF, -EAGAIN or -errno.
  ssize_t io_recv(void* buf, size_t len);
  ssize_t io_send(const void* buf, size_t len);
  // Why the server closed the connection: the words after "the page server closed the connection".
  std::string closed_hint() const;
  int flush();
  int check_request(const PageRequest& request);  // 0, or the failure submit() and queue() return
  int hello_answered();
  int read_replies(std::vector<PageReply>* done);
  // The front request's reply is complete (its trailer too, under checksums): hands it on, or re-fetches.
  int reply_complete(std::vector<PageReply>* done);
  void append_get(const PageRequest& request);
  int close_session(int timeout_ms, int32_t* status, bool fin_with_close);
  // The next payload bytes (at most want) of a sink request into its sink: bytes moved, 0 at EOF, -EAGAIN, or
  // -errno (sink_error_ set when the sink, not the socket, failed).
  ssize_t recv_to_sink(const PageRequest& request, size_t want);

  wire::Format format_;
  uint64_t page_size_;
  int fd_ = -1;
  std::unique_ptr<TlsSession> tls_;
  std::string tls_peer_;  // "host:port", for messages
  std::vector<uint8_t> out_;
  size_t out_off_ = 0;
  std::vector<uint8_t> hello_out_;  // the HELLO, sent before out_ (in a TLS record of its own)
  size_t hello_off_ = 0;
  bool hello_awaiting_ = false;     // its reply comes before any GET's
  uint8_t hello_in_[wire::kHelloReplySize];
  size_t hello_got_ = 0;
  uint64_t link_checkpoint_ = 0;
  uint64_t hello_features_ = 0;     // what the HELLO asked for
  bool checksums_ = false;
  bool hello_granted_ = false;
  uint64_t granted_features_ = 0;
  bool link_lost_ = false;
  bool reconnected_ = false;
  std::vector<uint8_t> trailer_;    // the current reply's checksums
  size_t trailer_got_ = 0;
  bool in_trailer_ = false;
  uint64_t checksum_mismatches_ = 0;
  std::string last_mismatch_;
  // Replies held back while their bad pages are fetched again: the first reply's request and page count.
  struct Refetch {
    PageRequest original;
    uint64_t reply_pages = 0;
  };
  std::unordered_map<uint64_t, Refetch> refetching_;  // by cookie
  std::deque<PageRequest> fifo_;
  uint8_t head_[wire::HEADER_SIZE_MAX];
  size_t head_len_ = 0;
  bool in_payload_ = false;
  uint64_t payload_len_ = 0;
  uint64_t payload_got_ = 0;
  uint64_t reply_pages_ = 0;
  uint64_t last_progress_ns_ = 0;
  uint64_t bytes_received_ = 0;
  uint64_t bytes_sent_ = 0;
  std::string error_;
  bool closing_ = false;         // begin_close() was called
  bool fin_sent_ = false;
  uint8_t close_answer_[4];
  size_t close_got_ = 0;
  std::vector<uint8_t> sink_buf_;  // sink requests under TLS
  std::string sink_error_;
  size_t read_limit_ = SIZE_MAX;
};

class LocalPageSource : public PageSource {
 public:
  explicit LocalPageSource(uint64_t page_size) : page_size_(page_size) {}

  // Pages [img_start, img_start + nr_pages*page_size) of pid are at file_offset in fd (a pages-*.img; not
  // owned: keep it open while the source is used). Returns 0, or -EINVAL (unaligned, overlapping).
  int add_run(uint64_t pid, uint64_t img_start, uint64_t nr_pages, int fd, uint64_t file_offset);

  int fd() const override { return -1; }
  int submit(const PageRequest& request) override;
  int pump(std::vector<PageReply>* done) override;
  size_t in_flight() const override { return ready_.size(); }
  int close(int, int32_t* status) override {
    if (status) *status = 0;
    return 0;
  }
  uint64_t bytes_received() const override { return bytes_read_; }
  const std::string& error() const override { return error_; }
  const char* kind() const override { return "local"; }

 private:
  struct Run {
    uint64_t nr_pages;
    int fd;
    uint64_t file_offset;
  };
  uint64_t page_size_;
  std::map<uint64_t, std::map<uint64_t, Run>> runs_;  // pid -> img_start -> run
  std::vector<PageReply> ready_;
  uint64_t bytes_read_ = 0;
  std::string error_;
};

}  // namespace lazyd
