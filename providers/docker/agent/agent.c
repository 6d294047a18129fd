/*
 * agent-sandbox's exec agent: the main process of a Docker sandbox.
 *
 *   agent --ttl SECONDS   serve clients on stdin/stdout (the container's attach stream) and on
 *                         an abstract unix socket (for relays); end the sandbox at the TTL
 *   agent relay           copy stdin to the agent's socket and its answers to stdout (one
 *                         engine exec per extra client)
 *
 * It starts processes on request, streams their output under per-client flow control, holds
 * background processes with their recent output for clients that attach later, kills process
 * trees, lists processes and reads and writes files as the container's user. The protocol is
 * described in docs/providers/docker.md. One thread, one poll loop; every descriptor it opens is
 * close-on-exec. Each process runs under a "shim" (a fork of the agent, a child subreaper) so
 * that its whole tree, daemons that left its session included, can be killed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL 1
#define MAX_PAYLOAD (4u << 20)
#define CHUNK 65536u
#define WINDOW (256u * 1024)    /* output in flight per process and client; stdin in flight */
#define RETAIN (1u << 20)       /* recent output kept per stream of a background process */
#define OUT_HIGH (512u * 1024)  /* a client's outbound buffer above which nothing is added */
#define MAX_PROCS 256
#define MAX_ENDED 16            /* ended background processes kept for attach and list */
#define MAX_CONNS 32
#define MAX_SUBS 1024
#define MAX_FILES 64
#define MAX_DRAIN 256
#define CMD_SHOWN 1024
#define E_NOT_REGULAR 1001
#define SOCKET_NAME "agent-sandbox.agent"

/* client -> agent */
#define C_HELLO 'h'
#define C_START 's'
#define C_ATTACH 'a'
#define C_STDIN 'i'
#define C_CLOSE_STDIN 'c'
#define C_KILL 'k'
#define C_CREDIT 'g'
#define C_RELEASE 'x'
#define C_LIST 'l'
#define C_READ 'r'
#define C_WRITE 'w'
#define C_DATA 'd'
#define C_END 'z'
#define C_BYE 'b'
/* agent -> client */
#define A_HELLO 'H'
#define A_REFUSED 'N'
#define A_STARTED 'P'
#define A_STDOUT '1'
#define A_STDERR '2'
#define A_EXIT 'X'
#define A_STDIN_ACK 'G'
#define A_FAILED 'F'
#define A_LISTED 'L'
#define A_DATA 'D'
#define A_DONE 'Z'

typedef struct { unsigned char *p; size_t len, cap; } buf;
typedef struct { buf b; uint64_t base; int fd, done; } stream;
typedef struct { int sub; unsigned gen; size_t n; } segment;

typedef struct {
    int used, detached, exited, final, status, slot;
    unsigned long oom_before;
    pid_t shim;
    char ref[19];
    stream out[2];
    int in_fd, in_close;
    buf in;
    segment *segs;
    size_t nsegs;
    uint64_t started_ms, seq;
    char cmd[CMD_SHOWN];
    size_t cmd_len;
} proc;

typedef struct {
    int used, conn, proc, exit_sent;
    unsigned gen;
    uint32_t chan;
    uint64_t sent[2], unacked;
} sub;

typedef struct {
    int used, in_fd, out_fd, hello, dead;
    unsigned gen;
    buf in, out;
    size_t out_off;
} conn;

typedef struct {
    int used, conn, fd, writing, err;
    unsigned gen;
    uint32_t id;
    uint64_t left;
} file;

static proc procs[MAX_PROCS];
static sub subs[MAX_SUBS];
static conn conns[MAX_CONNS];
static file files[MAX_FILES];
static int drains[MAX_DRAIN];
static int ndrains, maxfd = 2, sigfd = -1, listen_fd = -1;
static volatile int *slots;
static unsigned generation;
static uint64_t seq_counter;
static unsigned char scratch[CHUNK];

/* -- small helpers ------------------------------------------------------------------------ */

static void die(const char *what) {
    dprintf(2, "agent-sandbox agent: %s: %s\n", what, strerror(errno));
    _exit(70);
}

static int track(int fd) {
    if (fd > maxfd) maxfd = fd;
    return fd;
}

static void buf_add(buf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) die("out of memory");
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_drop(buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else if (n) {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->len == 0 && b->cap > 4 * CHUNK) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

static void buf_free(buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void put16(unsigned char *p, uint32_t v) { p[0] = v >> 8; p[1] = v; }
static void put32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static uint32_t get16(const unsigned char *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put64(unsigned char *p, uint64_t v) { put32(p, v >> 32); put32(p + 4, (uint32_t)v); }
static uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static uint64_t now_ms(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nonblocking(int fd, int on) {
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK);
}

static uint64_t stream_end(const stream *s) { return s->base + s->b.len; }

/* -- frames out ------------------------------------------------------------------------- */

static size_t pending(const conn *c) { return c->out.len - c->out_off; }

static void emit(conn *c, int type, uint32_t id, const void *a, size_t an, const void *b, size_t bn) {
    unsigned char head[9];
    if (c->dead) return;
    put32(head, (uint32_t)(5 + an + bn));
    head[4] = (unsigned char)type;
    put32(head + 5, id);
    buf_add(&c->out, head, 9);
    buf_add(&c->out, a, an);
    buf_add(&c->out, b, bn);
}

static void fail(conn *c, uint32_t id, int code, const char *message) {
    unsigned char head[2];
    put16(head, (uint32_t)code);
    emit(c, A_FAILED, id, head, 2, message, strlen(message));
}

/* -- processes ------------------------------------------------------------------------------ */

static void drain_later(int fd) {
    if (fd < 0) return;
    if (ndrains < MAX_DRAIN) drains[ndrains++] = fd;
    else close(fd);
}

static void sub_free(int i) {
    subs[i].used = 0;
    subs[i].gen = ++generation;
}

static int subscribers(int p) {
    int n = 0;
    for (int i = 0; i < MAX_SUBS; i++) n += subs[i].used && subs[i].proc == p;
    return n;
}

static void proc_free(int p) {
    proc *pr = &procs[p];
    for (int i = 0; i < MAX_SUBS; i++)
        if (subs[i].used && subs[i].proc == p) sub_free(i);
    for (int s = 0; s < 2; s++) {
        drain_later(pr->out[s].fd);
        buf_free(&pr->out[s].b);
    }
    if (pr->in_fd >= 0) close(pr->in_fd);
    buf_free(&pr->in);
    free(pr->segs);
    memset(pr, 0, sizeof *pr);
}

static unsigned long oom_kills(void) {
    static const char *paths[] = {"/sys/fs/cgroup/memory/memory.oom_control",
                                  "/sys/fs/cgroup/memory.events"};
    unsigned long count = 0;
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(paths[i], "re");
        char line[128];
        if (!f) continue;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "oom_kill %lu", &count) == 1) break;
        fclose(f);
        return count;
    }
    return 0;
}

static char marker[48];  /* in a shim: "AGENT_SANDBOX_PROC=<ref>", in its command's environment */

static int marked(int pid) {
    char path[64], env[65536];
    ssize_t len;
    int fd, found = 0;
    snprintf(path, sizeof path, "/proc/%d/environ", pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return 0;
    len = read(fd, env, sizeof env);
    close(fd);
    for (ssize_t at = 0; at < len && !found; at += (ssize_t)strnlen(env + at, (size_t)(len - at)) + 1)
        found = strncmp(env + at, marker, (size_t)(len - at)) == 0;
    return found;
}

/* Send `sig` to every descendant of the calling process (a child subreaper: orphans come back to
 * it, where the kernel honours that; where it does not, as under gVisor, an orphan still carries
 * the command's marker in its environment); returns how many it reached. */
static int signal_descendants(int sig) {
    pid_t self = getpid(), *pids = NULL, *parents = NULL;
    char *mark = NULL;
    size_t n = 0, cap = 0;
    int killed = 0;
    DIR *dir = opendir("/proc");
    struct dirent *entry;
    if (!dir) return 0;
    while ((entry = readdir(dir))) {
        char path[64], text[512], *close_paren;
        int pid = atoi(entry->d_name), parent, fd;
        ssize_t len;
        if (pid <= 0 || pid == self) continue;
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
        if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) continue;
        len = read(fd, text, sizeof text - 1);
        close(fd);
        if (len <= 0) continue;
        text[len] = 0;
        if (!(close_paren = strrchr(text, ')')) || sscanf(close_paren + 1, " %*c %d", &parent) != 1)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            pids = realloc(pids, cap * sizeof *pids);
            parents = realloc(parents, cap * sizeof *parents);
            if (!pids || !parents) _exit(70);
        }
        pids[n] = pid;
        parents[n++] = parent == 1 && marked(pid) ? self : parent;
    }
    closedir(dir);
    mark = calloc(n + 1, 1);
    for (int changed = 1; changed && mark;) {
        changed = 0;
        for (size_t i = 0; i < n; i++) {
            if (mark[i]) continue;
            int ours = parents[i] == self;
            for (size_t j = 0; j < n && !ours; j++) ours = mark[j] && pids[j] == parents[i];
            if (ours) mark[i] = changed = 1;
        }
    }
    for (size_t i = 0; i < n && mark; i++)
        if (mark[i] && kill(pids[i], sig) == 0) killed++;
    free(pids);
    free(parents);
    free(mark);
    return killed;
}

static void exec_child(char **argv, char **envp, const char *cwd) {
    extern char **environ;
    sigset_t all;
    setpgid(0, 0);
    for (int sig = 1; sig < 65; sig++) signal(sig, SIG_DFL);
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, NULL);
    if (cwd && chdir(cwd) != 0) {
        dprintf(2, "agent-sandbox: cannot enter %s: %s\n", cwd, strerror(errno));
        _exit(126);
    }
    environ = envp;
    execvp(argv[0], argv);
    int err = errno;
    if (err == ENOEXEC) {
        int argc = 0;
        while (argv[argc]) argc++;
        char **script = calloc(argc + 2, sizeof *script);
        if (script) {
            script[0] = "sh";
            memcpy(script + 1, argv, (argc + 1) * sizeof *argv);
            execv("/bin/sh", script);
        }
    }
    dprintf(2, "%s: %s\n", argv[0], err == ENOENT ? "command not found" : strerror(err));
    _exit(err == ENOENT ? 127 : 126);
}

/* The shim: parent and subreaper of one command's tree. It reports the command's wait status
 * in its slot and ends with the command; asked to kill (SIGTERM), it kills the whole tree and
 * ends once nothing of it is left. */
static void shim(int slot, int fds[3], char **argv, char **envp, const char *cwd, const char *ref) {
    sigset_t wanted;
    pid_t child;
    int killing = 0, done = 0;
    for (int i = 0; i < 3; i++) dup2(fds[i], i);
    for (int fd = 3; fd <= maxfd; fd++) close(fd);
    snprintf(marker, sizeof marker, "AGENT_SANDBOX_PROC=%s", ref);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    if ((child = fork()) == 0) exec_child(argv, envp, cwd);
    if (child < 0) {
        slots[2 * slot + 1] = 126 << 8;
        __atomic_store_n(&slots[2 * slot], 1, __ATOMIC_RELEASE);
        _exit(0);
    }
    int null = open("/dev/null", O_RDWR);
    for (int i = 0; i < 3; i++) dup2(null, i);
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGCHLD);
    sigaddset(&wanted, SIGTERM);
    for (;;) {
        struct timespec tick = {0, 20 * 1000 * 1000};
        int sig = killing ? sigtimedwait(&wanted, NULL, &tick) : sigwaitinfo(&wanted, NULL);
        if (sig == SIGTERM && !killing) {
            /* stop the tree while its ancestry is intact (no orphan escapes to PID 1 where
             * subreapers are not honoured, as under gVisor), until no new process appears */
            killing = 1;
            for (int seen = -1, n, round = 0; round < 20; round++, seen = n)
                if ((n = signal_descendants(SIGSTOP)) == seen) break;
            kill(-child, SIGKILL);
        }
        if (killing) signal_descendants(SIGKILL);
        for (;;) {
            int status;
            pid_t gone = waitpid(-1, &status, WNOHANG);
            if (gone < 0 && errno == ECHILD) _exit(0);
            if (gone <= 0) break;
            if (gone == child) {
                slots[2 * slot + 1] = status;
                __atomic_store_n(&slots[2 * slot], 1, __ATOMIC_RELEASE);
                done = 1;
            }
        }
        if (done && !killing) _exit(0);
    }
}

static void make_ref(char *ref) {
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[8];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, raw, sizeof raw) != sizeof raw) {
        uint64_t v = now_ms(CLOCK_MONOTONIC) ^ ((uint64_t)getpid() << 40) ^ ++seq_counter;
        memcpy(raw, &v, sizeof raw);
    }
    if (fd >= 0) close(fd);
    ref[0] = 'p';
    ref[1] = '-';
    for (int i = 0; i < 8; i++) {
        ref[2 + 2 * i] = hex[raw[i] >> 4];
        ref[3 + 2 * i] = hex[raw[i] & 15];
    }
    ref[18] = 0;
}

static int sub_new(int c, uint32_t chan, int p) {
    for (int i = 0; i < MAX_SUBS; i++) {
        if (subs[i].used) continue;
        memset(&subs[i], 0, sizeof subs[i]);
        subs[i].used = 1;
        subs[i].gen = ++generation;
        subs[i].conn = c;
        subs[i].chan = chan;
        subs[i].proc = p;
        subs[i].sent[0] = procs[p].out[0].base;
        subs[i].sent[1] = procs[p].out[1].base;
        return i;
    }
    return -1;
}

static int sub_find(int c, uint32_t chan) {
    for (int i = 0; i < MAX_SUBS; i++)
        if (subs[i].used && subs[i].conn == c && subs[i].chan == chan) return i;
    return -1;
}

static void started(conn *c, uint32_t chan, const proc *p) {
    unsigned char pid[4];
    put32(pid, (uint32_t)p->shim);
    emit(c, A_STARTED, chan, pid, 4, p->ref, strlen(p->ref));
}

/* START payload: u8 flags (1 detached, 2 stdin pipe) | u16 argc | u16 envc | argv, env and cwd
 * as NUL-terminated strings (an empty cwd: the container's working directory). */
static void do_start(int ci, uint32_t chan, const unsigned char *data, size_t len) {
    conn *c = &conns[ci];
    char **strings, **argv, **envp, *cwd;
    extern char **environ;
    int pipes[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}}, p = -1, fds[3];
    size_t argc, envc, count = 0, pos = 5;
    struct stat st;
    if (len < 5 || chan == 0 || sub_find(ci, chan) >= 0) return fail(c, chan, EINVAL, "bad start request");
    argc = get16(data + 1);
    envc = get16(data + 3);
    if (argc == 0 || data[len - 1] != 0) return fail(c, chan, EINVAL, "bad start request");
    if (!(strings = calloc(argc + envc + 1, sizeof *strings))) die("out of memory");
    while (pos < len && count < argc + envc + 1) {
        strings[count++] = (char *)data + pos;
        pos += strlen((char *)data + pos) + 1;
    }
    int err = count != argc + envc + 1 || pos != len ? EINVAL : 0;
    cwd = err ? NULL : strings[argc + envc];
    if (!err && *cwd) err = stat(cwd, &st) != 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;
    for (int i = 0; i < MAX_PROCS && p < 0 && !err; i++)
        if (!procs[i].used) p = i;
    if (!err && p < 0) err = EAGAIN;
    if (err) {
        free(strings);
        return fail(c, chan, err, err == EINVAL ? "bad start request" : err == EAGAIN
                    ? "too many processes in the sandbox" : "working directory not found");
    }
    /* the environment: the container's, then the request's on top */
    size_t own = 0;
    while (environ[own]) own++;
    envp = calloc(own + envc + 2, sizeof *envp);
    argv = calloc(argc + 1, sizeof *argv);
    if (!envp || !argv) die("out of memory");
    memcpy(argv, strings, argc * sizeof *argv);
    size_t n = 0;
    for (size_t i = 0; i < own; i++) {
        size_t key = strcspn(environ[i], "=");
        int replaced = 0;
        for (size_t j = 0; j < envc && !replaced; j++)
            replaced = strncmp(strings[argc + j], environ[i], key + 1) == 0;
        if (!replaced) envp[n++] = environ[i];
    }
    for (size_t j = 0; j < envc; j++) envp[n++] = strings[argc + j];
    char ref[19], mark_env[48];
    make_ref(ref);
    snprintf(mark_env, sizeof mark_env, "AGENT_SANDBOX_PROC=%s", ref);
    envp[n++] = mark_env;
    for (int i = 0; i < 3; i++) {
        if (i == 0 && !(data[0] & 2)) continue;
        if (pipe2(pipes[i], O_CLOEXEC) != 0) {
            for (int k = 0; k < 3; k++)
                for (int e = 0; e < 2; e++)
                    if (pipes[k][e] >= 0) close(pipes[k][e]);
            free(argv);
            free(envp);
            free(strings);
            return fail(c, chan, EAGAIN, "cannot create pipes");
        }
        track(pipes[i][0]);
        track(pipes[i][1]);
    }
    fds[0] = pipes[0][0] >= 0 ? pipes[0][0] : track(open("/dev/null", O_RDONLY | O_CLOEXEC));
    fds[1] = pipes[1][1];
    fds[2] = pipes[2][1];
    proc *pr = &procs[p];
    memset(pr, 0, sizeof *pr);
    pr->slot = p;
    slots[2 * p] = 0;
    pr->oom_before = oom_kills();
    pid_t shim_pid = fork();
    if (shim_pid == 0) shim(p, fds, argv, envp, *cwd ? cwd : NULL, ref);
    err = errno;
    free(argv);
    free(envp);
    close(fds[0]);
    close(fds[1]);
    close(fds[2]);
    if (shim_pid < 0) {
        close(pipes[1][0]);
        close(pipes[2][0]);
        if (pipes[0][1] >= 0) close(pipes[0][1]);
        free(strings);
        return fail(c, chan, EAGAIN, "cannot fork");
    }
    pr->used = 1;
    pr->shim = shim_pid;
    pr->detached = data[0] & 1;
    pr->out[0].fd = pipes[1][0];
    pr->out[1].fd = pipes[2][0];
    pr->in_fd = pipes[0][1];
    for (int i = 0; i < 2; i++) nonblocking(pr->out[i].fd, 1);
    if (pr->in_fd >= 0) nonblocking(pr->in_fd, 1);
    pr->started_ms = now_ms(CLOCK_REALTIME);
    pr->seq = ++seq_counter;
    memcpy(pr->ref, ref, sizeof ref);
    for (size_t i = 0, at = 0; i < argc && at < CMD_SHOWN; i++) {
        size_t take = strlen(strings[i]) + 1;
        if (take > CMD_SHOWN - at) take = CMD_SHOWN - at;
        memcpy(pr->cmd + at, strings[i], take);
        at += take;
        pr->cmd_len = at;
    }
    if (sub_new(ci, chan, p) < 0) {
        kill(pr->shim, SIGTERM);
        pr->detached = 1;  /* ends and is forgotten like an unwatched background process */
        free(strings);
        return fail(c, chan, EAGAIN, "too many clients");
    }
    free(strings);
    started(c, chan, pr);
}

static void do_attach(int ci, uint32_t chan, const unsigned char *data, size_t len) {
    conn *c = &conns[ci];
    if (chan == 0 || sub_find(ci, chan) >= 0) return fail(c, chan, EINVAL, "bad attach request");
    for (int p = 0; p < MAX_PROCS; p++) {
        proc *pr = &procs[p];
        if (pr->used && pr->detached && len == strlen(pr->ref) && memcmp(pr->ref, data, len) == 0) {
            if (sub_new(ci, chan, p) < 0) return fail(c, chan, EAGAIN, "too many clients");
            return started(c, chan, pr);
        }
    }
    fail(c, chan, ESRCH, "no such process");
}

static void do_stdin(int ci, int si, const unsigned char *data, size_t len) {
    proc *pr = &procs[subs[si].proc];
    if (pr->in_fd < 0 || pr->in_close) {
        unsigned char n[4];
        put32(n, (uint32_t)len);
        emit(&conns[ci], A_STDIN_ACK, subs[si].chan, n, 4, NULL, 0);
        return;
    }
    buf_add(&pr->in, data, len);
    if (pr->nsegs && pr->segs[pr->nsegs - 1].sub == si && pr->segs[pr->nsegs - 1].gen == subs[si].gen) {
        pr->segs[pr->nsegs - 1].n += len;
        return;
    }
    segment *segs = realloc(pr->segs, (pr->nsegs + 1) * sizeof *segs);
    if (!segs) die("out of memory");
    pr->segs = segs;
    segs[pr->nsegs++] = (segment){si, subs[si].gen, len};
}

static void ack_stdin(proc *pr, size_t written) {
    while (written && pr->nsegs) {
        segment *seg = &pr->segs[0];
        size_t n = seg->n < written ? seg->n : written;
        sub *s = &subs[seg->sub];
        if (s->used && s->gen == seg->gen) {
            unsigned char count[4];
            put32(count, (uint32_t)n);
            emit(&conns[s->conn], A_STDIN_ACK, s->chan, count, 4, NULL, 0);
        }
        seg->n -= n;
        written -= n;
        if (seg->n == 0) memmove(pr->segs, pr->segs + 1, --pr->nsegs * sizeof *pr->segs);
    }
}

static void close_stdin(proc *pr) {
    if (pr->in_fd >= 0) close(pr->in_fd);
    pr->in_fd = -1;
    ack_stdin(pr, pr->in.len);
    buf_drop(&pr->in, pr->in.len);
}

static void do_list(int ci, uint32_t id) {
    buf out = {0};
    for (uint64_t next = 0;;) {
        int best = -1;
        for (int p = 0; p < MAX_PROCS; p++)
            if (procs[p].used && procs[p].detached && procs[p].seq > next &&
                (best < 0 || procs[p].seq < procs[best].seq))
                best = p;
        if (best < 0) break;
        proc *pr = &procs[best];
        unsigned char head[16];
        int code = -1, sig = 0;
        if (pr->exited) {
            if (WIFSIGNALED(pr->status)) sig = WTERMSIG(pr->status), code = 128 + sig;
            else code = WEXITSTATUS(pr->status);
        }
        head[0] = !pr->exited;
        head[1] = (unsigned char)sig;
        put16(head + 2, (uint32_t)(code & 0xffff));
        put64(head + 4, pr->started_ms);
        put16(head + 12, (uint32_t)strlen(pr->ref));
        put16(head + 14, (uint32_t)pr->cmd_len);
        buf_add(&out, head, 16);
        buf_add(&out, pr->ref, strlen(pr->ref));
        buf_add(&out, pr->cmd, pr->cmd_len);
        next = pr->seq;
    }
    emit(&conns[ci], A_LISTED, id, out.p, out.len, NULL, 0);
    buf_free(&out);
}

/* -- files ---------------------------------------------------------------------------------- */

static int file_find(int ci, uint32_t id) {
    for (int i = 0; i < MAX_FILES; i++)
        if (files[i].used && files[i].conn == ci && files[i].id == id) return i;
    return -1;
}

static int file_new(int ci, uint32_t id) {
    if (id == 0 || file_find(ci, id) >= 0) return -1;
    for (int i = 0; i < MAX_FILES; i++) {
        if (files[i].used) continue;
        memset(&files[i], 0, sizeof files[i]);
        files[i].used = 1;
        files[i].conn = ci;
        files[i].id = id;
        files[i].fd = -1;
        return i;
    }
    return -1;
}

static void file_free(int i) {
    if (files[i].fd >= 0) close(files[i].fd);
    files[i].used = 0;
}

static int mkdirs(char *path) {
    for (char *slash = path + 1; (slash = strchr(slash, '/')); slash++) {
        *slash = 0;
        int made = mkdir(path, 0777) == 0 || errno == EEXIST;
        *slash = '/';
        if (!made) return -1;
    }
    return mkdir(path, 0777) == 0 || errno == EEXIST ? 0 : -1;
}

/* READ payload: u64 most bytes | path. WRITE payload: path; then DATA frames and END. */
static void do_file(int ci, int type, uint32_t id, const unsigned char *data, size_t len) {
    conn *c = &conns[ci];
    char path[4097];
    struct stat st;
    int skip = type == C_READ ? 8 : 0, f;
    if (len <= (size_t)skip || len - skip >= sizeof path || memchr(data + skip, 0, len - skip))
        return fail(c, id, EINVAL, "bad path");
    memcpy(path, data + skip, len - skip);
    path[len - skip] = 0;
    if ((f = file_new(ci, id)) < 0) return fail(c, id, EAGAIN, "bad or too many file requests");
    file *fl = &files[f];
    if (type == C_READ) {
        uint64_t most = get64(data);
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        int err = fd < 0 ? errno : fstat(fd, &st) != 0 ? errno
                  : S_ISDIR(st.st_mode)                ? EISDIR
                  : !S_ISREG(st.st_mode)               ? E_NOT_REGULAR
                  : (uint64_t)st.st_size > most        ? EFBIG : 0;
        if (err) {
            if (fd >= 0) close(fd);
            file_free(f);
            return fail(c, id, err, strerror(err));
        }
        nonblocking(fd, 0);
        fl->fd = track(fd);
        fl->left = most == UINT64_MAX ? most : most + 1;
        return;
    }
    fl->writing = 1;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        fl->err = S_ISDIR(st.st_mode) ? EISDIR : E_NOT_REGULAR;
        return;
    }
    int flags = O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;
    int fd = open(path, flags, 0666);
    if (fd < 0 && errno == ENOENT) {
        char *slash = strrchr(path, '/');
        if (slash && slash != path) {
            *slash = 0;
            int made = mkdirs(path);
            *slash = '/';
            if (made == 0) fd = open(path, flags, 0666);
        }
    }
    if (fd < 0) {
        fl->err = errno;
    } else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        fl->err = E_NOT_REGULAR;
        close(fd);
    } else {
        nonblocking(fd, 0);
        fl->fd = track(fd);
    }
}

static void file_data(int f, const unsigned char *data, size_t len) {
    file *fl = &files[f];
    while (len && fl->fd >= 0 && !fl->err) {
        ssize_t n = write(fl->fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fl->err = n < 0 ? errno : EIO;
            break;
        }
        data += n;
        len -= (size_t)n;
    }
}

static void file_end(int f) {
    file *fl = &files[f];
    conn *c = &conns[fl->conn];
    if (!fl->err && fl->fd >= 0 && close(fl->fd) != 0) fl->err = errno;
    fl->fd = -1;
    if (fl->err) fail(c, fl->id, fl->err, strerror(fl->err == E_NOT_REGULAR ? EINVAL : fl->err));
    else emit(c, A_DONE, fl->id, NULL, 0, NULL, 0);
    file_free(f);
}

static void pump_file(int f) {
    file *fl = &files[f];
    conn *c = &conns[fl->conn];
    while (pending(c) < OUT_HIGH) {
        size_t want = fl->left < CHUNK ? (size_t)fl->left : CHUNK;
        ssize_t n = read(fl->fd, scratch, want);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            fail(c, fl->id, errno, strerror(errno));
            return file_free(f);
        }
        if (n == 0) {
            emit(c, A_DONE, fl->id, NULL, 0, NULL, 0);
            return file_free(f);
        }
        fl->left -= (uint64_t)n;
        if (fl->left == 0) {
            fail(c, fl->id, EFBIG, "file grew past the limit");
            return file_free(f);
        }
        emit(c, A_DATA, fl->id, scratch, (size_t)n, NULL, 0);
    }
}

/* -- connections ---------------------------------------------------------------------------- */

static void release_all(int ci) {
    for (int i = 0; i < MAX_SUBS; i++)
        if (subs[i].used && subs[i].conn == ci) sub_free(i);
    for (int i = 0; i < MAX_FILES; i++)
        if (files[i].used && files[i].conn == ci) file_free(i);
}

static void conn_close(int ci) {
    conn *c = &conns[ci];
    release_all(ci);
    c->hello = 0;
    c->dead = 1;
    if (ci == 0) {  /* the attach stream: it stays, for a later client of the creator */
        c->out.len = c->out_off = 0;
        return;
    }
    close(c->in_fd);
    buf_free(&c->in);
    buf_free(&c->out);
    memset(c, 0, sizeof *c);
}

static void handle_frame(int ci, int type, uint32_t id, const unsigned char *data, size_t len) {
    conn *c = &conns[ci];
    int si;
    if (type == C_HELLO) {
        unsigned char hello[6];
        char message[160];
        if (len >= 2 && get16(data) == PROTOCOL) {
            c->hello = 1;
            put16(hello, PROTOCOL);
            put32(hello + 2, (uint32_t)getpid());
            emit(c, A_HELLO, 0, hello, 6, NULL, 0);
            return;
        }
        snprintf(message, sizeof message,
                 "the sandbox's exec agent speaks protocol %d, the client protocol %u",
                 PROTOCOL, len >= 2 ? get16(data) : 0);
        c->hello = 0;
        emit(c, A_REFUSED, 0, message, strlen(message), NULL, 0);
        return;
    }
    if (!c->hello) return;
    switch (type) {
    case C_START: return do_start(ci, id, data, len);
    case C_ATTACH: return do_attach(ci, id, data, len);
    case C_LIST: return do_list(ci, id);
    case C_READ:
    case C_WRITE: return do_file(ci, type, id, data, len);
    case C_BYE: return release_all(ci);
    case C_DATA:
    case C_END:
        if ((si = file_find(ci, id)) >= 0 && files[si].writing) {
            if (type == C_DATA) file_data(si, data, len);
            else file_end(si);
        }
        return;
    }
    if ((si = sub_find(ci, id)) < 0) return;  /* a process that ended meanwhile */
    proc *pr = &procs[subs[si].proc];
    switch (type) {
    case C_STDIN: return do_stdin(ci, si, data, len);
    case C_CLOSE_STDIN:
        pr->in_close = 1;
        if (pr->in.len == 0) close_stdin(pr);
        return;
    case C_KILL:
        if (!pr->exited) kill(pr->shim, SIGTERM);
        return;
    case C_CREDIT:
        if (len == 4) subs[si].unacked -= get32(data) < subs[si].unacked ? get32(data) : subs[si].unacked;
        return;
    case C_RELEASE: return sub_free(si);
    }
}

static void read_conn(int ci) {
    conn *c = &conns[ci];
    while (c->used && c->in_fd >= 0 && pending(c) <= OUT_HIGH) {
        ssize_t n = read(c->in_fd, scratch, CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) {
            if (ci == 0) c->in_fd = -1;  /* stdin closed: no client can reach us there */
            return conn_close(ci);
        }
        buf_add(&c->in, scratch, (size_t)n);
        size_t pos = 0;
        while (c->in.len - pos >= 9) {
            uint32_t size = get32(c->in.p + pos);
            if (size < 5 || size > MAX_PAYLOAD + 5) {  /* not our protocol: drop what came */
                pos = c->in.len;
                c->hello = 0;
                break;
            }
            if (c->in.len - pos - 4 < size) break;
            handle_frame(ci, c->in.p[pos + 4], get32(c->in.p + pos + 5), c->in.p + pos + 9, size - 5);
            pos += 4 + size;
        }
        buf_drop(&c->in, pos);
    }
}

static void flush(int ci) {
    conn *c = &conns[ci];
    while (pending(c)) {
        ssize_t n = write(c->out_fd, c->out.p + c->out_off, pending(c));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) return conn_close(ci);
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out.len) {
        c->out.len = c->out_off = 0;
    } else if (c->out_off > CHUNK) {
        buf_drop(&c->out, c->out_off);
        c->out_off = 0;
    }
}

static void accept_conn(void) {
    struct ucred cred;
    socklen_t size = sizeof cred;
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    track(fd);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0 ||
        (cred.uid != 0 && cred.uid != getuid())) {
        close(fd);
        return;
    }
    for (int ci = 1; ci < MAX_CONNS; ci++) {
        if (conns[ci].used) continue;
        conns[ci] = (conn){.used = 1, .in_fd = fd, .out_fd = fd, .gen = ++generation};
        return;
    }
    close(fd);
}

/* -- output ------------------------------------------------------------------------------- */

static int can_read(int p, int s) {
    proc *pr = &procs[p];
    return pr->out[s].fd >= 0 && (pr->detached || pr->final || pr->out[s].b.len < WINDOW);
}

static void read_output(int p, int s) {
    proc *pr = &procs[p];
    stream *st = &pr->out[s];
    while (can_read(p, s)) {
        ssize_t n = read(st->fd, scratch, CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            if (pr->exited) st->done = 1;
            return;
        }
        if (n <= 0) {
            close(st->fd);
            st->fd = -1;
            st->done = 1;
            return;
        }
        if (!pr->final) buf_add(&st->b, scratch, (size_t)n);
    }
}

static void pump_sub(int si) {
    sub *s = &subs[si];
    proc *pr = &procs[s->proc];
    conn *c = &conns[s->conn];
    while (pending(c) < OUT_HIGH && s->unacked < WINDOW) {
        int which = -1;
        for (int i = 0; i < 2 && which < 0; i++) {
            if (s->sent[i] < pr->out[i].base) s->sent[i] = pr->out[i].base;  /* fell behind */
            if (s->sent[i] < stream_end(&pr->out[i])) which = i;
        }
        if (which < 0) break;
        stream *st = &pr->out[which];
        size_t n = (size_t)(stream_end(st) - s->sent[which]);
        if (n > CHUNK) n = CHUNK;
        if (n > WINDOW - s->unacked) n = WINDOW - s->unacked;
        emit(c, which ? A_STDERR : A_STDOUT, s->chan, st->b.p + (s->sent[which] - st->base), n, NULL, 0);
        s->sent[which] += n;
        s->unacked += n;
    }
    if (pr->final && s->sent[0] == stream_end(&pr->out[0]) && s->sent[1] == stream_end(&pr->out[1])) {
        unsigned char status[5];
        int code = 0, sig = 0;
        if (WIFSIGNALED(pr->status)) sig = WTERMSIG(pr->status);
        else code = WEXITSTATUS(pr->status);
        put32(status, (uint32_t)code);
        status[4] = (unsigned char)sig;
        emit(c, A_EXIT, s->chan, status, 5, NULL, 0);
        sub_free(si);
    }
}

static void trim(int p) {
    proc *pr = &procs[p];
    for (int i = 0; i < 2; i++) {
        stream *st = &pr->out[i];
        uint64_t keep_from = stream_end(st);
        if (pr->detached) {
            if (st->b.len < 2 * RETAIN) continue;
            keep_from -= RETAIN;
        } else {
            for (int k = 0; k < MAX_SUBS; k++)
                if (subs[k].used && subs[k].proc == p && subs[k].sent[i] < keep_from)
                    keep_from = subs[k].sent[i] < st->base ? st->base : subs[k].sent[i];
        }
        buf_drop(&st->b, (size_t)(keep_from - st->base));
        st->base = keep_from;
    }
}

static void reap(void) {
    for (;;) {
        int status;
        pid_t gone = waitpid(-1, &status, WNOHANG);
        if (gone <= 0) return;
        for (int p = 0; p < MAX_PROCS; p++) {
            proc *pr = &procs[p];
            if (!pr->used || pr->exited || pr->shim != gone) continue;
            pr->exited = 1;
            pr->status = __atomic_load_n(&slots[2 * p], __ATOMIC_ACQUIRE) ? slots[2 * p + 1] : status;
            if (WIFSIGNALED(pr->status) && WTERMSIG(pr->status) == SIGKILL && oom_kills() > pr->oom_before) {
                static const char note[] =
                    "agent-sandbox: exit 137 with the sandbox's memory limit reached "
                    "(OOMKilled: the kernel's out-of-memory killer ended a process)\n";
                buf_add(&pr->out[1].b, note, sizeof note - 1);
            }
            if (pr->in_fd >= 0) close_stdin(pr);
        }
    }
}

static void settle(void) {
    int ended = 0;
    for (int p = 0; p < MAX_PROCS; p++) {
        proc *pr = &procs[p];
        if (!pr->used) continue;
        if (pr->exited && !pr->final) {
            for (int s = 0; s < 2; s++)
                if (!pr->out[s].done) read_output(p, s);
            pr->final = pr->out[0].done && pr->out[1].done;
        }
        for (int i = 0; i < MAX_SUBS; i++)
            if (subs[i].used && subs[i].proc == p) pump_sub(i);
        trim(p);
        if (pr->final && !pr->detached && subscribers(p) == 0) proc_free(p);
        else if (pr->final) ended++;
    }
    while (ended-- > MAX_ENDED) {  /* forget the oldest ended background processes */
        int oldest = -1;
        for (int p = 0; p < MAX_PROCS; p++)
            if (procs[p].used && procs[p].final && (oldest < 0 || procs[p].seq < procs[oldest].seq))
                oldest = p;
        if (oldest >= 0) proc_free(oldest);
    }
    for (int f = 0; f < MAX_FILES; f++)
        if (files[f].used && !files[f].writing) pump_file(f);
}

static void write_stdin(proc *pr) {
    while (pr->in.len) {
        ssize_t n = write(pr->in_fd, pr->in.p, pr->in.len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) return close_stdin(pr);  /* the process closed its stdin */
        ack_stdin(pr, (size_t)n);
        buf_drop(&pr->in, (size_t)n);
    }
    if (pr->in_close) close_stdin(pr);
}

/* -- main ------------------------------------------------------------------------------------ */

static int relay(void) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), in_open = 1;
    prctl(PR_SET_DUMPABLE, 0);
    memcpy(addr.sun_path + 1, SOCKET_NAME, strlen(SOCKET_NAME));
    if (connect(sock, (struct sockaddr *)&addr, offsetof(struct sockaddr_un, sun_path) + 1 + strlen(SOCKET_NAME))) {
        dprintf(2, "agent-sandbox: the sandbox's exec agent does not answer: %s\n", strerror(errno));
        return 69;
    }
    for (;;) {
        struct pollfd fds[2] = {{in_open ? 0 : -1, POLLIN, 0}, {sock, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0 && errno != EINTR) return 70;
        for (int i = 0; i < 2; i++) {
            if (!fds[i].revents) continue;
            int from = i ? sock : 0, to = i ? 1 : sock;
            ssize_t n = read(from, scratch, CHUNK);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0 && i) return 0;
            if (n <= 0) {
                shutdown(sock, SHUT_WR);
                in_open = 0;
                continue;
            }
            for (ssize_t off = 0, w; off < n; off += w)
                if ((w = write(to, scratch + off, (size_t)(n - off))) <= 0) return i ? 0 : 70;
        }
    }
}

int main(int argc, char **argv) {
    uint64_t deadline = 0;
    sigset_t mask;
    if (argc == 2 && strcmp(argv[1], "relay") == 0) return relay();
    if (argc != 3 || strcmp(argv[1], "--ttl") != 0) {
        dprintf(2, "usage: agent --ttl SECONDS | agent relay\n");
        return 64;
    }
    deadline = now_ms(CLOCK_MONOTONIC) + strtoull(argv[2], NULL, 10) * 1000;
    prctl(PR_SET_DUMPABLE, 0);  /* no one in the sandbox opens our stdio through /proc/1/fd */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    if ((sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) die("signalfd");
    track(sigfd);
    slots = mmap(NULL, sizeof(int) * 2 * MAX_PROCS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED) die("mmap");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path + 1, SOCKET_NAME, strlen(SOCKET_NAME));
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd >= 0 &&
        (bind(listen_fd, (struct sockaddr *)&addr, offsetof(struct sockaddr_un, sun_path) + 1 + strlen(SOCKET_NAME)) ||
         listen(listen_fd, 16))) {
        close(listen_fd);
        listen_fd = -1;  /* no relays, the attach stream still works */
    }
    if (listen_fd >= 0) track(listen_fd);
    nonblocking(0, 1);
    nonblocking(1, 1);
    fcntl(0, F_SETPIPE_SZ, 1 << 20);  /* fewer wakeups on the attach stream; a failure is harmless */
    fcntl(1, F_SETPIPE_SZ, 1 << 20);
    conns[0] = (conn){.used = 1, .in_fd = 0, .out_fd = 1, .gen = ++generation};
    for (;;) {
        struct pollfd fds[2 + 2 * MAX_CONNS + 3 * MAX_PROCS + MAX_DRAIN];
        int what[sizeof fds / sizeof *fds], nfds = 0;
        uint64_t now = now_ms(CLOCK_MONOTONIC);
        if (now >= deadline) break;
#define WATCH(f, ev, tag) (fds[nfds] = (struct pollfd){(f), (ev), 0}, what[nfds++] = (tag))
        WATCH(sigfd, POLLIN, -1);
        if (listen_fd >= 0) WATCH(listen_fd, POLLIN, -2);
        for (int ci = 0; ci < MAX_CONNS; ci++) {
            conn *c = &conns[ci];
            if (!c->used || c->in_fd < 0) continue;
            if (pending(c) <= OUT_HIGH) WATCH(c->in_fd, POLLIN, 1000 + ci);
            if (pending(c)) WATCH(c->out_fd, POLLOUT, 2000 + ci);
        }
        for (int p = 0; p < MAX_PROCS; p++) {
            proc *pr = &procs[p];
            if (!pr->used) continue;
            for (int s = 0; s < 2; s++)
                if (can_read(p, s)) WATCH(pr->out[s].fd, POLLIN, 3000 + 2 * p + s);
            if (pr->in_fd >= 0 && pr->in.len) WATCH(pr->in_fd, POLLOUT, 4000 + p);
        }
        for (int d = 0; d < ndrains; d++) WATCH(drains[d], POLLIN, 5000 + d);
        uint64_t wait = deadline - now;
        for (int f = 0; f < MAX_FILES; f++)  /* a file being read is never "ready": go on at once */
            if (files[f].used && !files[f].writing && pending(&conns[files[f].conn]) < OUT_HIGH) wait = 0;
        if (poll(fds, (nfds_t)nfds, wait > 60000 ? 60000 : (int)wait) < 0 && errno != EINTR) die("poll");
        for (int i = 0; i < nfds; i++) {
            if (!fds[i].revents) continue;
            int tag = what[i];
            if (tag == -1) {
                struct signalfd_siginfo info;
                while (read(sigfd, &info, sizeof info) == sizeof info)
                    if (info.ssi_signo != SIGCHLD) goto end;
                reap();
            } else if (tag == -2) {
                accept_conn();
            } else if (tag >= 5000) {
                ssize_t n = read(drains[tag - 5000], scratch, CHUNK);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                    close(drains[tag - 5000]);
                    drains[tag - 5000] = -1;
                }
            } else if (tag >= 4000) {
                if (procs[tag - 4000].used && procs[tag - 4000].in_fd >= 0) write_stdin(&procs[tag - 4000]);
            } else if (tag >= 3000) {
                int p = (tag - 3000) / 2;
                if (procs[p].used && procs[p].out[(tag - 3000) % 2].fd >= 0) read_output(p, (tag - 3000) % 2);
            } else if (tag >= 2000) {
                if (conns[tag - 2000].used) flush(tag - 2000);
            } else if (tag >= 1000) {
                if (conns[tag - 1000].used && conns[tag - 1000].in_fd >= 0) read_conn(tag - 1000);
            }
        }
        for (int d = 0; d < ndrains;) {
            if (drains[d] < 0) drains[d] = drains[--ndrains];
            else d++;
        }
        for (int p = 0; p < MAX_PROCS; p++)
            if (procs[p].used && procs[p].in_fd >= 0 && procs[p].in_close && !procs[p].in.len) close_stdin(&procs[p]);
        settle();
        for (int ci = 0; ci < MAX_CONNS; ci++)
            if (conns[ci].used && pending(&conns[ci])) flush(ci);
    }
end:
    kill(-1, SIGKILL);  /* the TTL (or a stop): nothing of the sandbox outlives us */
    return 0;
}
