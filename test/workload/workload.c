/*
 * workload.c: a self-verifying memory workload for lazyd's end-to-end tests, demo and benchmarks.
 *
 * Build:  gcc -O2 -Wall -pthread -o workload workload.c
 *
 * Usage:  workload <dir> <MiB> <seq|random> <seed> [--threads N] [--children N]
 *                  [--interval-ms M] [--hb-ms H] [--zombie 0|1] [--hot-pct P]
 *
 *   <dir>            output directory (must exist); all files below are relative to it
 *   <MiB>            size of the data area, in MiB (1 MiB = 256 pages of 4 KiB)
 *   seq|random       page order of each verify pass: ascending, or a fresh pseudo-random permutation per pass
 *   <seed>           pattern seed (unsigned decimal)
 *   --threads N      N extra verifier threads; each pass is split into N+1 slices (default 0)
 *   --children N     fork N children before filling; child i runs the same workload in <dir>/c<i>/ with
 *                    seed+i+1 and its own data area (default 0). The parent is ready only once all are.
 *   --interval-ms M  pause between verify passes (default 100; 0 = back to back)
 *   --hb-ms H        heartbeat period (default 5)
 *   --zombie 1       before anything else, fork a child that exits at once and is never reaped: the tree then
 *                    holds a zombie (it moves to its own process group first, and the reaping of do-fork
 *                    children waits only for the caller's group, so it is left alone). Logs "zombie pid <pid>".
 *   --hot-pct P      every verify pass reads only a fixed, scattered P% of the pages (page p is hot when
 *                    mix(seed, p, 0x407) % 100 < P), in the pass's order: a hot working set touched over and over.
 *                    0 = passes read nothing (an idle process; only the heartbeat runs). Default 100: every page.
 *                    The rest is checked by do-verify-all.
 *
 * Memory: <MiB> of mmap(MAP_PRIVATE|MAP_ANONYMOUS) with madvise(MADV_NOHUGEPAGE). Page p (0-based, 4 KiB) holds
 * 512 u64 words; word w is mix(seed, p, w), the splitmix64-style function below (`workload w 1 seq 1` is what
 * scripts/record-fixtures.sh records, so the test vectors of test/fixtures hold these bytes).
 *
 * Files (every line is written with open(O_APPEND) + one write() + close(), so no fd stays open on them and a
 * checkpoint never sees open files there):
 *   ready     written once (ready.tmp, then rename) after filling, and after all --children are ready:
 *               pid <getpid()> host <pid in the host's /proc> pages <n> base 0x<addr> children <N>
 *   log       one line at start, then one line per verify pass, plus event lines:
 *               start pid <pid> pages <n> seed <s> order <seq|random> threads <N>
 *               pass <n> pid <pid> ok <pages> bad <k> sum 0x<16 hex> t <end ns> start <start ns> us <duration>
 *               BAD page <p> word <w> got 0x<16 hex> want 0x<16 hex>      (at most 4 per pass, before its pass line)
 *               op <munmap|mremap|dontneed|fork> ...                     (a control file was acted on)
 *               fork-ok pid <pid> pages <n> sum 0x<hex>  /  fork-bad pid <pid> pages <n> bad <k>   (written by the child)
 *               reaped pid <pid> status <exit code or -signal>
 *               ERROR <text>                                             (an operation failed; the test must fail)
 *             "ok" counts pages that matched, "bad" pages that did not; "sum" is the u64 sum (mod 2^64) of every
 *             word read in the pass; t/start are CLOCK_REALTIME in ns; us is the pass duration in microseconds.
 *   hb        the heartbeat thread appends "<CLOCK_REALTIME ns>" every --hb-ms milliseconds
 *   touch     after a pass in which some page's first read took over 2 µs (a page fault, or a preemption):
 *               touch pid <pid> pass <n> slow <k> <us>:<count> ...
 *             a histogram of those first reads, bucket <us> = the upper bound (4 buckets per doubling, from
 *             2 µs; the last one is open). What a lazy restore's faults cost, as the workload sees them.
 *               slowread pid <pid> end <CLOCK_REALTIME ns> ns <duration>
 *             for each first read over 20 ms, when it happens: one that spans a checkpoint (the task was frozen
 *             between the two clock reads) can then be told apart from a slow fault.
 *
 * Control files, checked by the main thread between passes (each is deleted once acted on; each acts once):
 *   do-munmap    munmap() the last quarter of the data area; later passes verify only the rest
 *   do-mremap    move the second quarter to a fresh address with mremap(MREMAP_MAYMOVE|MREMAP_FIXED) and grow it
 *                to twice its size; the moved pages keep their pattern at the new place, the grown part must
 *                read as zeros (it is verified as logical pages n..n+q-1)
 *   do-dontneed  madvise(MADV_DONTNEED) on the third quarter; from then on those pages must read as zeros
 *   do-fork      fork a child that verifies the memory it inherited once, logs fork-ok/fork-bad and exits
 *   do-verify-all  verify every mapped page once, whatever --hot-pct, and log
 *                verify-all pid <pid> ok <pages> bad <k> sum 0x<16 hex> us <duration>
 *
 * Signals: SIGUSR1 ends the current pause between passes at once (control files are then acted on without
 * waiting for --interval-ms); only the main thread receives it.
 *
 * Exit: never on its own (kill it). Exits 2 on a usage error, 1 if set-up fails (with an ERROR line when the
 * log is writable).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define MAX_BAD_LINES 4

enum kind { PATTERN, ZERO, GONE };

/* Command line, shared by the parent and its --children. */
static struct {
    const char *dir;
    unsigned long mib;
    int random_order;
    uint64_t seed;
    int threads, children, interval_ms, hb_ms, zombie, hot_pct;
} opt = {.interval_ms = 100, .hb_ms = 5, .hot_pct = 100};

/* One running instance: the data area and what every logical page is expected to hold. */
static const char *dir;
static uint64_t seed;
static size_t npages;            /* original data pages */
static size_t nlogical;          /* npages + room for the pages grown by do-mremap */
static char **page_addr;         /* logical page -> current address */
static unsigned char *page_kind; /* logical page -> enum kind */
static uint32_t *order;          /* the pass's page order; only the first nverify entries are used */
static size_t nverify;
static atomic_int bad_lines;
static pid_t zombie_pid; /* --zombie: the unreaped child (main instance only) */

/* First-read latency of a page, when slow: bucket i holds reads of at most touch_bound_ns(i). */
#define TOUCH_BUCKETS 80
#define TOUCH_MIN_NS 2000ULL
static atomic_ulong touch_hist[TOUCH_BUCKETS];

/* ------------------------------------------------------------------ helpers */

static uint64_t mix(uint64_t s, uint64_t p, uint64_t w)
{
    uint64_t z = s * 0x9E3779B97F4A7C15ULL + p * 0xBF58476D1CE4E5B9ULL + w * 0x94D049BB133111EBULL + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static volatile sig_atomic_t wake_up;

static void on_sigusr1(int sig)
{
    (void)sig;
    wake_up = 1;
}

/* The pause between passes: like sleep_ms(), but SIGUSR1 ends it early. */
static void pause_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (!wake_up && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    wake_up = 0;
}

/* Appends one formatted line to <dir>/<name>: open, a single write, close. */
static void append_line(const char *name, const char *fmt, ...)
{
    char path[4096], line[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (len < 0)
        return;
    if (len > (int)sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, len) < 0) { /* nothing useful to do */
    }
    close(fd);
}

static void fail(const char *what)
{
    append_line("log", "ERROR %s: %s", what, strerror(errno));
    exit(1);
}

/* Deletes <dir>/<name> if it exists; true if it did. */
static int take_control_file(const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return unlink(path) == 0;
}

/* ------------------------------------------------------------------ verification */

struct result {
    size_t ok, bad;
    uint64_t sum;
};

static unsigned long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* 2 µs * 2^(i/4): four buckets per doubling. */
static unsigned long long touch_bound_ns(int i)
{
    static const double step[4] = {1.0, 1.189207115, 1.414213562, 1.681792831};
    return (unsigned long long)(TOUCH_MIN_NS * step[i % 4]) << (i / 4);
}

static void record_touch(unsigned long long ns)
{
    if (ns <= TOUCH_MIN_NS)
        return;
    if (ns > 20000000ULL)
        append_line("touch", "slowread pid %d end %llu ns %llu", getpid(), now_ns(), ns);
    int i = 1;
    while (i < TOUCH_BUCKETS - 1 && ns > touch_bound_ns(i))
        i++;
    atomic_fetch_add(&touch_hist[i], 1);
}

/* Logs and clears the histogram of the pass's slow first reads (nothing when there were none). */
static void log_touches(unsigned long pass)
{
    char line[480];
    int len = 0;
    unsigned long slow = 0;
    for (int i = 0; i < TOUCH_BUCKETS; i++) {
        unsigned long n = atomic_exchange(&touch_hist[i], 0);
        if (!n)
            continue;
        slow += n;
        if (len < (int)sizeof(line) - 40)
            len += snprintf(line + len, sizeof(line) - len, " %llu:%lu", (touch_bound_ns(i) + 999) / 1000, n);
    }
    if (slow)
        append_line("touch", "touch pid %d pass %lu slow %lu%s", getpid(), pass, slow, line);
}

static void verify_page(uint32_t p, struct result *r)
{
    const uint64_t *words = (const uint64_t *)page_addr[p];
    int zero = page_kind[p] == ZERO, page_bad = 0;
    /* The first read of the page, timed: a missing page faults here. */
    unsigned long long t0 = mono_ns();
    uint64_t first = *(volatile const uint64_t *)&words[0];
    record_touch(mono_ns() - t0);
    (void)first;
    for (size_t w = 0; w < WORDS; w++) {
        uint64_t got = words[w], want = zero ? 0 : mix(seed, p, w);
        r->sum += got;
        if (got != want && !page_bad) {
            page_bad = 1;
            if (atomic_fetch_add(&bad_lines, 1) < MAX_BAD_LINES)
                append_line("log", "BAD page %u word %zu got 0x%016" PRIx64 " want 0x%016" PRIx64, p, w, got, want);
        }
    }
    if (page_bad)
        r->bad++;
    else
        r->ok++;
}

static void verify_slice(size_t slice, size_t nslices, struct result *r)
{
    size_t from = nverify * slice / nslices, to = nverify * (slice + 1) / nslices;
    for (size_t i = from; i < to; i++)
        verify_page(order[i], r);
}

static int hot_page(size_t p)
{
    return opt.hot_pct >= 100 || mix(seed, p, 0x407) % 100 < (uint64_t)opt.hot_pct;
}

/* Lists the pages still mapped (the hot ones, or all) in ascending order, shuffled for --random with a per-pass
 * generator. */
static void plan_pages(unsigned long pass, int all)
{
    nverify = 0;
    for (size_t p = 0; p < nlogical; p++)
        if (page_kind[p] != GONE && (all || hot_page(p)))
            order[nverify++] = (uint32_t)p;
    if (!opt.random_order || nverify < 2)
        return;
    uint64_t state = mix(seed, pass, 0x5eed);
    for (size_t i = nverify - 1; i > 0; i--) {
        state += 0x9E3779B97F4A7C15ULL;
        size_t j = (size_t)(mix(state, i, 0) % (i + 1));
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static void plan_pass(unsigned long pass)
{
    plan_pages(pass, 0);
}

/* ------------------------------------------------------------------ threads */

static pthread_barrier_t pass_start, pass_end;
static struct result *slice_results;

static void *verifier_thread(void *arg)
{
    size_t slice = (size_t)(uintptr_t)arg;
    for (;;) {
        pthread_barrier_wait(&pass_start);
        slice_results[slice] = (struct result){0};
        verify_slice(slice, opt.threads + 1, &slice_results[slice]);
        pthread_barrier_wait(&pass_end);
    }
    return NULL;
}

static void *heartbeat_thread(void *arg)
{
    (void)arg;
    for (;;) {
        append_line("hb", "%llu", now_ns());
        sleep_ms(opt.hb_ms);
    }
    return NULL;
}

/* ------------------------------------------------------------------ control files */

static void set_range(size_t from, size_t to, enum kind k)
{
    for (size_t p = from; p < to; p++)
        page_kind[p] = k;
}

static void do_munmap(void)
{
    size_t q = npages / 4, from = 3 * q;
    if (page_kind[from] == GONE) {
        append_line("log", "op munmap skipped: already unmapped");
        return;
    }
    if (munmap(page_addr[from], (npages - from) * PAGE) < 0) {
        append_line("log", "ERROR op munmap: %s", strerror(errno));
        return;
    }
    set_range(from, npages, GONE);
    append_line("log", "op munmap pages %zu-%zu addr %p", from, npages - 1, (void *)page_addr[from]);
}

static void do_mremap(void)
{
    size_t q = npages / 4;
    char *old = page_addr[q];
    if (nlogical > npages) {
        append_line("log", "op mremap skipped: already moved");
        return;
    }
    /* Reserve a fresh range twice the size, then move the quarter onto it and grow it there. */
    char *dst = mmap(NULL, 2 * q * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dst == MAP_FAILED) {
        append_line("log", "ERROR op mremap: reserve: %s", strerror(errno));
        return;
    }
    char *moved = mremap(old, q * PAGE, 2 * q * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
    if (moved == MAP_FAILED) {
        append_line("log", "ERROR op mremap: %s", strerror(errno));
        munmap(dst, 2 * q * PAGE);
        return;
    }
    for (size_t i = 0; i < q; i++) {
        page_addr[q + i] = moved + i * PAGE;
        page_addr[npages + i] = moved + (q + i) * PAGE;
        page_kind[npages + i] = ZERO;
    }
    nlogical = npages + q;
    append_line("log", "op mremap pages %zu-%zu from %p to %p grown pages %zu-%zu", q, 2 * q - 1, (void *)old,
                (void *)moved, npages, npages + q - 1);
}

static void do_dontneed(void)
{
    size_t q = npages / 4, from = 2 * q;
    if (page_kind[from] == ZERO) {
        append_line("log", "op dontneed skipped: already done");
        return;
    }
    if (madvise(page_addr[from], q * PAGE, MADV_DONTNEED) < 0) {
        append_line("log", "ERROR op dontneed: %s", strerror(errno));
        return;
    }
    set_range(from, from + q, ZERO);
    append_line("log", "op dontneed pages %zu-%zu addr %p", from, from + q - 1, (void *)page_addr[from]);
}

static void do_fork(void)
{
    pid_t child = fork();
    if (child < 0) {
        append_line("log", "ERROR op fork: %s", strerror(errno));
        return;
    }
    if (child == 0) { /* only this thread exists here: verify everything alone */
        struct result r = {0};
        atomic_store(&bad_lines, 0);
        verify_slice(0, 1, &r);
        if (r.bad)
            append_line("log", "fork-bad pid %d pages %zu bad %zu", getpid(), r.ok + r.bad, r.bad);
        else
            append_line("log", "fork-ok pid %d pages %zu sum 0x%016" PRIx64, getpid(), r.ok, r.sum);
        _exit(r.bad ? 1 : 0);
    }
    append_line("log", "op fork child %d", child);
}

static void do_verify_all(void)
{
    struct result r = {0};
    atomic_store(&bad_lines, 0);
    plan_pages(0, 1);
    unsigned long long start = now_ns();
    verify_slice(0, 1, &r);
    append_line("log", "verify-all pid %d ok %zu bad %zu sum 0x%016" PRIx64 " us %llu", getpid(), r.ok, r.bad, r.sum,
                (now_ns() - start) / 1000);
}

static void handle_control_files(void)
{
    if (take_control_file("do-munmap"))
        do_munmap();
    if (take_control_file("do-mremap"))
        do_mremap();
    if (take_control_file("do-dontneed"))
        do_dontneed();
    if (take_control_file("do-fork")) {
        plan_pages(0, 1); /* the child verifies the current layout */
        do_fork();
    }
    if (take_control_file("do-verify-all"))
        do_verify_all();
}

static void reap_children(void)
{
    int status;
    pid_t pid;
    /* 0: only children in our process group, which leaves the --zombie child (own group) unreaped. */
    while ((pid = waitpid(opt.zombie ? 0 : -1, &status, WNOHANG)) > 0)
        append_line("log", "reaped pid %d status %d", pid,
                    WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
}

/* ------------------------------------------------------------------ one instance */

static long host_pid(void)
{
    char buf[64];
    ssize_t n = readlink("/proc/self", buf, sizeof(buf) - 1);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

static void write_ready(char *base, const pid_t *kids)
{
    char path[4096], tmp[4096], text[256];
    for (int i = 0; i < opt.children; i++) { /* wait until every child is ready, or fail if one died */
        snprintf(path, sizeof(path), "%s/c%d/ready", dir, i);
        while (access(path, F_OK) != 0) {
            int status;
            if (waitpid(kids[i], &status, WNOHANG) == kids[i]) {
                errno = ECHILD;
                fail("a --children process exited before it was ready");
            }
            sleep_ms(1);
        }
    }
    int len = snprintf(text, sizeof(text), "pid %d host %ld pages %zu base %p children %d\n", getpid(), host_pid(),
                       npages, (void *)base, opt.children);
    snprintf(tmp, sizeof(tmp), "%s/ready.tmp", dir);
    snprintf(path, sizeof(path), "%s/ready", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, len) != len || close(fd) < 0)
        fail("write ready.tmp");
    if (rename(tmp, path) < 0)
        fail("rename ready.tmp");
}

static void run(const char *instance_dir, uint64_t instance_seed, const pid_t *kids)
{
    dir = instance_dir;
    seed = instance_seed;
    npages = opt.mib * (1024 * 1024 / PAGE);
    nlogical = npages;
    size_t q = npages / 4;
    page_addr = calloc(npages + q, sizeof(*page_addr));
    page_kind = calloc(npages + q, 1);
    order = calloc(npages + q, sizeof(*order));
    slice_results = calloc(opt.threads + 1, sizeof(*slice_results));
    if (!page_addr || !page_kind || !order || !slice_results)
        fail("calloc");

    char *base = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        fail("mmap");
    if (madvise(base, npages * PAGE, MADV_NOHUGEPAGE) < 0)
        fail("madvise(MADV_NOHUGEPAGE)");
    for (size_t p = 0; p < npages; p++) {
        uint64_t *words = (uint64_t *)(base + p * PAGE);
        for (size_t w = 0; w < WORDS; w++)
            words[w] = mix(seed, p, w);
        page_addr[p] = (char *)words;
    }
    append_line("log", "start pid %d pages %zu seed %" PRIu64 " order %s threads %d", getpid(), npages, seed,
                opt.random_order ? "random" : "seq", opt.threads);
    if (zombie_pid)
        append_line("log", "zombie pid %d", (int)zombie_pid);

    /* SIGUSR1 goes to the main thread only: the other threads start with it blocked. */
    struct sigaction sa = {.sa_handler = on_sigusr1};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t usr1, old_mask;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, &old_mask);

    pthread_t tid;
    if (pthread_barrier_init(&pass_start, NULL, opt.threads + 1) || pthread_barrier_init(&pass_end, NULL, opt.threads + 1))
        fail("pthread_barrier_init");
    if ((errno = pthread_create(&tid, NULL, heartbeat_thread, NULL)))
        fail("pthread_create(heartbeat)");
    for (int i = 0; i < opt.threads; i++)
        if ((errno = pthread_create(&tid, NULL, verifier_thread, (void *)(uintptr_t)(i + 1))))
            fail("pthread_create(verifier)");
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);

    write_ready(base, kids);

    for (unsigned long pass = 1;; pass++) {
        reap_children();
        handle_control_files();
        plan_pass(pass);
        atomic_store(&bad_lines, 0);
        unsigned long long start = now_ns();
        if (opt.threads)
            pthread_barrier_wait(&pass_start);
        slice_results[0] = (struct result){0};
        verify_slice(0, opt.threads + 1, &slice_results[0]);
        if (opt.threads)
            pthread_barrier_wait(&pass_end);
        struct result total = {0};
        for (int i = 0; i <= opt.threads; i++) {
            total.ok += slice_results[i].ok;
            total.bad += slice_results[i].bad;
            total.sum += slice_results[i].sum;
        }
        unsigned long long end = now_ns();
        append_line("log", "pass %lu pid %d ok %zu bad %zu sum 0x%016" PRIx64 " t %llu start %llu us %llu", pass,
                    getpid(), total.ok, total.bad, total.sum, end, start, (end - start) / 1000);
        log_touches(pass);
        if (opt.interval_ms > 0)
            pause_ms(opt.interval_ms);
    }
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr, "usage: workload <dir> <MiB> <seq|random> <seed> [--threads N] [--children N] "
                    "[--interval-ms M] [--hb-ms H] [--zombie 0|1] [--hot-pct P]\n");
    exit(2);
}

static long number(const char *text, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        usage();
    opt.dir = argv[1];
    opt.mib = number(argv[2], 1, 1 << 20);
    if (!strcmp(argv[3], "seq"))
        opt.random_order = 0;
    else if (!strcmp(argv[3], "random"))
        opt.random_order = 1;
    else
        usage();
    char *end;
    errno = 0;
    opt.seed = strtoull(argv[4], &end, 10);
    if (errno || end == argv[4] || *end)
        usage();
    for (int i = 5; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "--threads"))
            opt.threads = number(argv[++i], 0, 256);
        else if (!strcmp(argv[i], "--children"))
            opt.children = number(argv[++i], 0, 256);
        else if (!strcmp(argv[i], "--interval-ms"))
            opt.interval_ms = number(argv[++i], 0, 3600000);
        else if (!strcmp(argv[i], "--hb-ms"))
            opt.hb_ms = number(argv[++i], 1, 3600000);
        else if (!strcmp(argv[i], "--zombie"))
            opt.zombie = number(argv[++i], 0, 1);
        else if (!strcmp(argv[i], "--hot-pct"))
            opt.hot_pct = number(argv[++i], 0, 100);
        else
            usage();
    }
    if (sysconf(_SC_PAGESIZE) != (long)PAGE) {
        fprintf(stderr, "workload: needs 4 KiB pages\n");
        return 1;
    }

    pid_t zombie = 0;
    if (opt.zombie) {
        zombie = fork();
        if (zombie < 0) {
            perror("fork");
            return 1;
        }
        if (zombie == 0) {
            setpgid(0, 0);
            _exit(0);
        }
        /* Wait until it is a zombie (waitid with WNOWAIT leaves it so), for the log line to be true. */
        siginfo_t si;
        if (waitid(P_PID, zombie, &si, WEXITED | WNOWAIT) < 0) {
            perror("waitid");
            return 1;
        }
        zombie_pid = zombie;
    }
    pid_t *kids = calloc(opt.children + 1, sizeof(*kids));
    char (*child_dir)[4096] = calloc(opt.children + 1, sizeof(*child_dir));
    if (!kids || !child_dir)
        return 1;
    for (int i = 0; i < opt.children; i++) {
        snprintf(child_dir[i], sizeof(child_dir[i]), "%s/c%d", opt.dir, i);
        if (mkdir(child_dir[i], 0755) < 0 && errno != EEXIST) {
            perror(child_dir[i]);
            return 1;
        }
        kids[i] = fork();
        if (kids[i] < 0) {
            perror("fork");
            return 1;
        }
        if (kids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* die with the parent, also outside a pid namespace */
            opt.children = 0;
            zombie_pid = 0;
            run(child_dir[i], opt.seed + i + 1, NULL);
        }
    }
    run(opt.dir, opt.seed, kids);
    return 0;
}
