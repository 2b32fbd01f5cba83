// Unit tests of LazyRanges: takes, claims, splits at edges, remaps of partly in-flight ranges, drops, fork.
#include "lazy/lazy_ranges.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <random>
#include <set>
#include <vector>

#include "check.h"

using lazyd::LazyRange;
using lazyd::LazyRanges;
using lazyd::LazyRequest;


constexpr uint64_t P = 4096;
constexpr uint64_t B = 0x7f0000000000;

static LazyRange R(uint64_t start_page, uint64_t end_page, int64_t img_shift_pages = 0) {
  LazyRange r;
  r.start = B + start_page * P;
  r.end = B + end_page * P;
  r.img_start = r.start + img_shift_pages * static_cast<int64_t>(P);
  return r;
}

static bool same(const std::vector<LazyRange>& got, const std::vector<LazyRange>& want) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); i++) {
    if (got[i].start != want[i].start || got[i].end != want[i].end || got[i].img_start != want[i].img_start)
      return false;
  }
  return true;
}

static void test_build() {
  LazyRanges lr(P);
  CHECK(lr.build({R(0, 4), R(4, 8), R(10, 12)}) == 0);
  CHECK(lr.pages_remaining() == 10);
  CHECK(lr.pages_in_flight() == 0);
  // Input ranges are never merged: they may be different VMAs.
  CHECK(lr.remaining().size() == 3);
  CHECK(lr.lookup(B) == LazyRanges::Where::kRemaining);
  CHECK(lr.lookup(B + 9 * P) == LazyRanges::Where::kNone);
  CHECK(lr.lookup(B + 11 * P + 5) == LazyRanges::Where::kRemaining);
  CHECK(lr.lookup(B + 12 * P) == LazyRanges::Where::kNone);
  // Unsorted input is fine; overlap, unaligned and empty are not.
  CHECK(lr.build({R(10, 12), R(0, 4)}) == 0);
  CHECK(lr.pages_remaining() == 6);
  CHECK(lr.build({R(0, 4), R(3, 8)}) == -EINVAL);
  CHECK(lr.build({R(2, 2)}) == -EINVAL);
  LazyRange odd = R(0, 1);
  odd.end += 1;
  CHECK(lr.build({odd}) == -EINVAL);
  CHECK(lr.build({}) == 0);
  CHECK(lr.done());
}

static void test_take_fault() {
  LazyRanges lr(P);
  CHECK(lr.build({R(0, 16)}) == 0);
  // A fault in the middle takes exactly one page, splitting the range in three.
  LazyRequest req = lr.take(B + 5 * P + 123, P);
  CHECK(req.img_start == B + 5 * P && req.len == P);
  CHECK(same(lr.remaining(), {R(0, 5), R(6, 16)}));
  CHECK(same(lr.in_flight(), {R(5, 6)}));
  CHECK(lr.lookup(B + 5 * P) == LazyRanges::Where::kInFlight);
  // A second fault on the same page takes nothing (it waits for the reply).
  CHECK(!lr.take(B + 5 * P, P));
  // Fault-around: the rest of a window, stopping at the range end.
  req = lr.take(B + 6 * P, 64 * P);
  CHECK(req.img_start == B + 6 * P && req.len == 10 * P);
  CHECK(same(lr.remaining(), {R(0, 5)}));
  // Adjacent in-flight pieces of one input range merge.
  CHECK(same(lr.in_flight(), {R(5, 16)}));
  CHECK(lr.pages_in_flight() == 11);
  // The reply for the single page completes only that page.
  CHECK(lr.complete(B + 5 * P, P) == 1);
  CHECK(same(lr.in_flight(), {R(6, 16)}));
  CHECK(lr.complete(B + 6 * P, 10 * P) == 10);
  CHECK(lr.pages_in_flight() == 0);
  CHECK(lr.pages_remaining() == 5);
  // At the very first and last page.
  req = lr.take(B, P);
  CHECK(req.img_start == B && req.len == P);
  req = lr.take(B + 4 * P, P);
  CHECK(req.img_start == B + 4 * P && req.len == P);
  CHECK(same(lr.remaining(), {R(1, 4)}));
  // max_bytes below a page still takes the page.
  req = lr.take(B + 2 * P, 1);
  CHECK(req.len == P);
}

static void test_take_across_pieces() {
  LazyRanges lr(P);
  // Two input ranges that touch (current and image): one request covers both, but they stay separate pieces.
  CHECK(lr.build({R(0, 4), R(4, 8), R(9, 12)}) == 0);
  LazyRequest req = lr.take(B + 2 * P, 100 * P);
  CHECK(req.img_start == B + 2 * P && req.len == 6 * P);  // stops at the hole at page 8
  CHECK(same(lr.in_flight(), {R(2, 4), R(4, 8)}));
  std::vector<LazyRange> pieces = lr.claim(req.img_start, req.len);
  CHECK(same(pieces, {R(2, 4), R(4, 8)}));
  CHECK(pieces[0].seg != pieces[1].seg);
  // A range contiguous now but not at dump time is not joined.
  LazyRanges lr2(P);
  CHECK(lr2.build({R(0, 4), R(4, 8, 100)}) == 0);
  req = lr2.take(B, 100 * P);
  CHECK(req.len == 4 * P);
}

static void test_background() {
  LazyRanges lr(P);
  CHECK(lr.build({R(0, 3), R(10, 20)}) == 0);
  LazyRequest req = lr.next_background(8 * P);
  CHECK(req.img_start == B && req.len == 3 * P);
  req = lr.next_background(8 * P);
  CHECK(req.img_start == B + 10 * P && req.len == 8 * P);
  req = lr.next_background(8 * P);
  CHECK(req.img_start == B + 18 * P && req.len == 2 * P);
  CHECK(!lr.next_background(8 * P));
  CHECK(lr.pages_in_flight() == 13);
  CHECK(!lr.done());
}

static void test_short_reply_release() {
  LazyRanges lr(P);
  CHECK(lr.build({R(0, 16)}) == 0);
  LazyRequest req = lr.next_background(16 * P);
  CHECK(req.len == 16 * P);
  // The server answered 6 of 16 pages: install those, the rest goes back to remaining.
  std::vector<LazyRange> pieces = lr.claim(req.img_start, 6 * P);
  CHECK(same(pieces, {R(0, 6)}));
  lr.release(req.img_start + 6 * P, 10 * P);
  CHECK(same(lr.remaining(), {R(6, 16)}));
  CHECK(lr.pages_in_flight() == 0);
  // A partial install: requeue the tail of a claimed piece, it merges with its neighbour.
  req = lr.take(B + 6 * P, 4 * P);
  pieces = lr.claim(req.img_start, req.len);
  CHECK(same(pieces, {R(6, 10)}));
  LazyRange tail = pieces[0];
  tail.img_start += 2 * P;
  tail.start += 2 * P;
  lr.requeue(tail);
  CHECK(same(lr.remaining(), {R(8, 16)}));
  // unclaim puts a piece back in flight.
  req = lr.take(B + 8 * P, 2 * P);
  pieces = lr.claim(req.img_start, req.len);
  lr.unclaim(pieces[0]);
  CHECK(same(lr.in_flight(), {R(8, 10)}));
}

static void test_drop() {
  LazyRanges lr(P);
  CHECK(lr.build({R(0, 10), R(20, 30)}) == 0);
  CHECK(lr.take(B + 4 * P, 2 * P).len == 2 * P);  // pages 4,5 in flight
  // Drop 3..25: partial overlaps on both sides, in-flight included.
  CHECK(lr.drop(B + 3 * P, B + 25 * P) == 3 + 2 + 2 + 5);
  CHECK(same(lr.remaining(), {R(0, 3), R(25, 30)}));
  CHECK(lr.pages_in_flight() == 0);
  // The reply for dropped pages claims nothing: its data is discarded.
  CHECK(lr.claim(B + 4 * P, 2 * P).empty());
  // Unaligned edges round outwards.
  CHECK(lr.drop(B + 25 * P + 100, B + 26 * P - 100) == 1);
  CHECK(same(lr.remaining(), {R(0, 3), R(26, 30)}));
  // Dropping nothing.
  CHECK(lr.drop(B + 100 * P, B + 200 * P) == 0);
  CHECK(lr.drop(B + 5 * P, B + 5 * P) == 0);
  // Drop a piece of an in-flight range: the rest of the reply still installs.
  LazyRequest req = lr.take(B + 26 * P, 4 * P);
  CHECK(req.len == 4 * P);
  CHECK(lr.drop(B + 27 * P, B + 28 * P) == 1);
  std::vector<LazyRange> pieces = lr.claim(req.img_start, req.len);
  CHECK(same(pieces, {R(26, 27), R(28, 30)}));
}

static void test_remap() {
  LazyRanges lr(P);
  CHECK(lr.build({R(0, 16)}) == 0);
  // Pages 6..9 in flight, move pages 4..12 to page 100.
  LazyRequest req = lr.take(B + 6 * P, 4 * P);
  CHECK(req.img_start == B + 6 * P);
  lr.remap(B + 4 * P, B + 100 * P, 8 * P);
  // Current addresses shift, image addresses stay.
  std::vector<LazyRange> rem = lr.remaining();
  CHECK(rem.size() == 4);
  CHECK(same(rem, {R(0, 4), R(12, 16), {B + 100 * P, B + 102 * P, B + 4 * P, 0}, {B + 106 * P, B + 108 * P, B + 10 * P, 0}}));
  CHECK(same(lr.in_flight(), {{B + 102 * P, B + 106 * P, B + 6 * P, 0}}));
  CHECK(lr.lookup(B + 103 * P) == LazyRanges::Where::kInFlight);
  CHECK(lr.lookup(B + 5 * P) == LazyRanges::Where::kNone);
  // The reply (by image address) lands at the new place.
  std::vector<LazyRange> pieces = lr.claim(B + 6 * P, 4 * P);
  CHECK(same(pieces, {{B + 102 * P, B + 106 * P, B + 6 * P, 0}}));
  // Faulting at the new address asks for the image address.
  req = lr.take(B + 107 * P, P);
  CHECK(req.img_start == B + 11 * P && req.len == P);
  // Moved pieces touching in both spaces merge (same new seg).
  lr.requeue(pieces[0]);
  CHECK(same(lr.remaining(), {R(0, 4), R(12, 16), {B + 100 * P, B + 107 * P, B + 4 * P, 0}}));
}

static void test_remap_partial_in_flight_and_overwrite() {
  LazyRanges lr(P);
  CHECK(lr.build({R(0, 8), R(50, 60)}) == 0);
  // Pages 2..6 in flight; move pages 4..8 onto 50..54 (MREMAP_FIXED over other lazy memory).
  CHECK(lr.take(B + 2 * P, 4 * P).len == 4 * P);
  lr.remap(B + 4 * P, B + 50 * P, 4 * P);
  // Old pages at 50..54 are gone (unmapped by mremap); 54..60 stays.
  CHECK(same(lr.remaining(), {R(0, 2), {B + 52 * P, B + 54 * P, B + 6 * P, 0}, R(54, 60)}));
  CHECK(same(lr.in_flight(), {R(2, 4), {B + 50 * P, B + 52 * P, B + 4 * P, 0}}));
  // One reply, two destinations.
  std::vector<LazyRange> pieces = lr.claim(B + 2 * P, 4 * P);
  CHECK(same(pieces, {R(2, 4), {B + 50 * P, B + 52 * P, B + 4 * P, 0}}));
  // Reply for the old pages at 50..54 (image 50..54) would claim nothing now.
  CHECK(lr.claim(B + 50 * P, 4 * P).empty());
  // Different VMAs that end up adjacent after a move are not merged: the moved piece has a new seg.
  CHECK(same(lr.remaining(), {R(0, 2), {B + 52 * P, B + 54 * P, B + 6 * P, 0}, R(54, 60)}));
  // Remap of nothing, of zero length.
  lr.remap(B + 1000 * P, B + 2000 * P, 4 * P);
  lr.remap(B, B + 5000 * P, 0);
  CHECK(lr.pages_remaining() == 2 + 2 + 6);
}

static void test_fork() {
  LazyRanges parent(P);
  CHECK(parent.build({R(0, 10)}) == 0);
  CHECK(parent.take(B + 3 * P, 2 * P).len == 2 * P);
  CHECK(parent.complete(B + 3 * P, P) == 1);   // page 3 installed in the parent before the fork
  CHECK(parent.take(B + 7 * P, P).len == P);   // page 7 in flight at fork time
  LazyRanges child = parent.fork_copy();
  // The child lacks everything the parent lacks, in-flight pages included, all remaining.
  CHECK(child.pages_in_flight() == 0);
  CHECK(child.pages_remaining() == 9);
  CHECK(same(child.remaining(), {R(0, 3), R(4, 10)}));
  // The parent is unchanged; the two are independent.
  CHECK(parent.pages_in_flight() == 2);
  CHECK(child.take(B + 7 * P, P).len == P);
  CHECK(parent.lookup(B + 8 * P) == LazyRanges::Where::kRemaining);
  CHECK(child.lookup(B + 7 * P) == LazyRanges::Where::kInFlight);
}

// Random operations against a page-by-page model.
static void test_random_model() {
  std::mt19937_64 rng(12345);
  constexpr uint64_t N = 256;
  for (int round = 0; round < 200; round++) {
    LazyRanges lr(P);
    // model: current page -> {state, image page}; state 0 none, 1 remaining, 2 in flight
    std::vector<int> state(N * 3, 0);
    std::vector<uint64_t> img(N * 3, 0);
    std::vector<LazyRange> input;
    uint64_t p = 0;
    while (p < N) {
      uint64_t len = 1 + rng() % 20;
      if (rng() % 3 == 0) {
        p += len;
        continue;
      }
      uint64_t e = std::min(N, p + len);
      input.push_back(R(p, e));
      for (uint64_t q = p; q < e; q++) state[q] = 1, img[q] = B + q * P;
      p = e;
    }
    CHECK(lr.build(input) == 0);
    std::vector<LazyRequest> outstanding;
    for (int op = 0; op < 60; op++) {
      int kind = rng() % 6;
      if (kind == 0 || kind == 1) {
        uint64_t page = rng() % (N * 3);
        LazyRequest req = kind == 0 ? lr.take(B + page * P, (1 + rng() % 8) * P) : lr.next_background(16 * P);
        if (req) {
          outstanding.push_back(req);
          for (uint64_t q = 0; q < N * 3; q++)
            if (state[q] == 1 && img[q] >= req.img_start && img[q] < req.img_start + req.len) state[q] = 2;
        }
      } else if (kind == 2 && !outstanding.empty()) {
        size_t i = rng() % outstanding.size();
        LazyRequest req = outstanding[i];
        outstanding.erase(outstanding.begin() + i);
        for (const LazyRange& piece : lr.claim(req.img_start, req.len)) {
          for (uint64_t a = piece.start; a < piece.end; a += P) {
            uint64_t q = (a - B) / P;
            if (state[q] != 2 || img[q] != piece.img_start + (a - piece.start)) CHECK(false);
            state[q] = 0;
          }
        }
        bool claimed_all = true;
        for (uint64_t q = 0; q < N * 3; q++)
          claimed_all &= !(state[q] == 2 && img[q] >= req.img_start && img[q] < req.img_start + req.len);
        CHECK(claimed_all);
      } else if (kind == 3) {
        uint64_t a = rng() % (N * 3), b = a + rng() % 30;
        lr.drop(B + a * P, B + std::min(b, N * 3) * P);
        for (uint64_t q = a; q < std::min(b, N * 3); q++) state[q] = 0;
      } else if (kind == 4) {
        uint64_t len = 1 + rng() % 20;
        uint64_t from = rng() % (N * 3 - len), to = rng() % (N * 3 - len);
        if ((from < to && from + len > to) || (to < from && to + len > from) || from == to) continue;
        lr.remap(B + from * P, B + to * P, len * P);
        std::vector<int> ns(state.begin() + from, state.begin() + from + len);
        std::vector<uint64_t> ni(img.begin() + from, img.begin() + from + len);
        for (uint64_t q = from; q < from + len; q++) state[q] = 0;
        for (uint64_t q = 0; q < len; q++) state[to + q] = ns[q], img[to + q] = ni[q];
      }
      // Compare.
      uint64_t rem = 0, fl = 0;
      for (uint64_t q = 0; q < N * 3; q++) {
        LazyRanges::Where w = lr.lookup(B + q * P);
        int s = w == LazyRanges::Where::kRemaining ? 1 : w == LazyRanges::Where::kInFlight ? 2 : 0;
        if (s != state[q]) {
          std::fprintf(stderr, "round %d op %d page %lu: got %d want %d\n", round, op, (unsigned long)q, s, state[q]);
          CHECK(s == state[q]);
        }
        rem += state[q] == 1;
        fl += state[q] == 2;
      }
      CHECK(lr.pages_remaining() == rem);
      CHECK(lr.pages_in_flight() == fl);
      bool images_match = true;
      for (const LazyRange& r : lr.remaining())
        for (uint64_t a = r.start; a < r.end; a += P) images_match &= img[(a - B) / P] == r.img_start + (a - r.start);
      for (const LazyRange& r : lr.in_flight())
        for (uint64_t a = r.start; a < r.end; a += P) images_match &= img[(a - B) / P] == r.img_start + (a - r.start);
      CHECK(images_match);
    }
  }
}

// A fault on a page the drain has asked for already: the page once more (its dump-time address, after a remap too),
// nothing moved; the first reply claims it, the second finds nothing to claim.
static void test_in_flight_page() {
  LazyRanges lr(P);
  CHECK(lr.build({R(0, 16)}) == 0);
  CHECK(!lr.in_flight_page(B + 3 * P));  // remaining, not in flight
  LazyRequest drain = lr.next_background(8 * P);
  CHECK(drain.img_start == B && drain.len == 8 * P);
  LazyRequest again = lr.in_flight_page(B + 3 * P + 17);
  CHECK(again.img_start == B + 3 * P && again.len == P);
  CHECK(same(lr.in_flight(), {R(0, 8)}) && lr.pages_in_flight() == 8);
  CHECK(same(lr.claim(again.img_start, again.len), {R(3, 4)}));
  CHECK(lr.claim(drain.img_start, drain.len).size() == 2);  // the drain's reply: the pages around it
  CHECK(lr.pages_in_flight() == 0 && !lr.in_flight_page(B + 3 * P));
  // Moved since the dump: asked for by its dump-time address.
  LazyRanges moved(P);
  CHECK(moved.build({R(0, 4, 100)}) == 0);
  CHECK(moved.next_background(4 * P).len == 4 * P);
  again = moved.in_flight_page(B + 2 * P);
  CHECK(again.img_start == B + 102 * P && again.len == P);
}

int main() {
  alarm(60);  // never hang a test run
  test_build();
  test_take_fault();
  test_in_flight_page();
  test_take_across_pieces();
  test_background();
  test_short_reply_release();
  test_drop();
  test_remap();
  test_remap_partial_in_flight_and_overwrite();
  test_fork();
  test_random_model();
  check_report();
  return 0;
}
