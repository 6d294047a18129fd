/* The command runner of the Vercel provider: the Perl shim of agent_sandbox_vercel/_shim.py as a
 * small static binary, uploaded once per sandbox, so a command costs one small exec and one
 * fork instead of a Perl start.
 *
 *   shim <deadline> <cwd> <kind> -- argv...     run argv; output framed on stdout
 *   shim --kill <pid>:<starttime>...            SIGKILL each pid still started at that time
 *                                               (run through sudo -n for another user's pids)
 *
 * The lines it writes, and what it guarantees, are the Perl shim's, line for line:
 *   f<hex "cwd: error">   the working directory could not be entered (exit 2)
 *   o<hex> / e<hex>       a chunk (at most 64 KiB) of the command's stdout / stderr
 *   x<code> <signal>      the command's end; the shim then exits with code, or 128 + signal
 * It is a child subreaper (so setsid/daemonized descendants stay its own), not dumpable (so a
 * command cannot write its stdout through /proc), and on SIGUSR1, or <deadline> seconds after it
 * started (0: never), SIGKILLs every descendant, those of another user through sudo -n.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536

static volatile sig_atomic_t kill_asked;
static sigset_t normal_mask;
static char self[4096];

static void out(const char *buf, size_t len) {
  while (len) {
    ssize_t w = write(1, buf, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      _exit(141);
    }
    buf += w;
    len -= (size_t)w;
  }
}

static void frame(char tag, const unsigned char *data, size_t len) {
  static const char hex[] = "0123456789abcdef";
  static char line[1 + 2 * CHUNK + 1];
  line[0] = tag;
  for (size_t i = 0; i < len; i++) {
    line[1 + 2 * i] = hex[data[i] >> 4];
    line[2 + 2 * i] = hex[data[i] & 15];
  }
  line[1 + 2 * len] = '\n';
  out(line, 2 * len + 2);
}

/* Parent pid and start time (fields 4 and 22) of /proc/<pid>/stat; 0 when it is gone. */
static int stat_of(const char *pid, long *ppid, char *start, size_t start_size) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%s/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p || p[1] != ' ') return 0;
  p += 2; /* field 3, the state */
  for (int field = 3; field < 22; field++) {
    char *space = strchr(p, ' ');
    if (!space) return 0;
    if (field == 4) *ppid = strtol(p, NULL, 10);
    p = space + 1;
  }
  size_t len = strcspn(p, " \n");
  if (len >= start_size) return 0;
  memcpy(start, p, len);
  start[len] = 0;
  return 1;
}

static int kill_if_same(int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    char *colon = strchr(argv[i], ':');
    if (!colon) continue;
    *colon = 0;
    long ppid;
    char start[32];
    if (stat_of(argv[i], &ppid, start, sizeof start) && !strcmp(start, colon + 1))
      kill((pid_t)strtol(argv[i], NULL, 10), SIGKILL);
  }
  return 0;
}

static pid_t command;
static int status, have_status, orphaned;

static void reap(void) {
  pid_t p;
  int st;
  while ((p = waitpid(-1, &st, WNOHANG)) > 0)
    if (p == command) status = st, have_status = 1;
  if (p < 0 && errno == ECHILD) orphaned = 1;
}

struct proc {
  long pid, ppid;
  char start[32];
};

/* SIGKILL every descendant until none is left (at most 50 rounds). */
static void kill_tree(void) {
  static int sudo_works = 1;
  long me = getpid();
  for (int round = 0; round < 50; round++) {
    struct proc *procs = NULL;
    size_t count = 0, room = 0;
    DIR *dir = opendir("/proc");
    if (!dir) return;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
      if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
      struct proc p;
      if (!stat_of(entry->d_name, &p.ppid, p.start, sizeof p.start)) continue;
      p.pid = strtol(entry->d_name, NULL, 10);
      if (count == room) {
        struct proc *more = realloc(procs, (room = room ? 2 * room : 256) * sizeof *procs);
        if (!more) break;
        procs = more;
      }
      procs[count++] = p;
    }
    closedir(dir);
    /* descendants, breadth first: a pid's children follow it in victims[] */
    size_t *victims = malloc((count + 1) * sizeof *victims), found = 0;
    if (!victims) {
      free(procs);
      return;
    }
    for (size_t head = 0;; head++) {
      long parent = head == 0 ? me : procs[victims[head - 1]].pid;
      for (size_t i = 0; i < count; i++)
        if (procs[i].ppid == parent && procs[i].pid != me) victims[found++] = i;
      if (head >= found) break;
    }
    if (!found) {
      free(victims);
      free(procs);
      return;
    }
    char **sudo = calloc(found + 5, sizeof *sudo); /* sudo -n self --kill pid:start... */
    size_t denied = 0;
    for (size_t i = 0; i < found; i++) {
      struct proc *p = &procs[victims[i]];
      if (kill((pid_t)p->pid, SIGKILL) < 0 && errno == EPERM && sudo) {
        char *arg = malloc(64);
        if (arg) snprintf(arg, 64, "%ld:%s", p->pid, p->start), sudo[4 + denied++] = arg;
      }
    }
    if (denied && sudo_works) {
      sudo[0] = "sudo", sudo[1] = "-n", sudo[2] = self, sudo[3] = "--kill";
      pid_t helper = fork();
      if (helper == 0) {
        dup2(2, 1); /* never into the framed output */
        sigprocmask(SIG_SETMASK, &normal_mask, NULL);
        execvp("sudo", sudo);
        _exit(127);
      }
      int st = -1;
      while (helper > 0 && waitpid(helper, &st, 0) < 0 && errno == EINTR) {
      }
      sudo_works = helper > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    if (sudo)
      for (size_t i = 0; i < denied; i++) free(sudo[4 + i]);
    free(sudo);
    free(victims);
    free(procs);
    reap();
    nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
  }
}

static void on_signal(int sig) {
  if (sig != SIGCHLD) kill_asked = 1;
}

/* execvp as glibc's (which the Perl shim uses): PATH search, a script without #! run by sh. */
static void run(char **argv) {
  const char *file = argv[0];
  if (strchr(file, '/')) {
    execv(file, argv);
    if (errno == ENOEXEC) goto script;
    return;
  }
  const char *path = getenv("PATH");
  if (!path) path = "/bin:/usr/bin";
  size_t flen = strlen(file);
  int denied = 0;
  char full[4096];
  for (const char *dir = path;; dir++) {
    const char *end = strchrnul(dir, ':');
    size_t dlen = (size_t)(end - dir);
    if (dlen + flen + 2 <= sizeof full) {
      if (dlen) {
        memcpy(full, dir, dlen);
        full[dlen] = '/';
        memcpy(full + dlen + 1, file, flen + 1);
      } else {
        memcpy(full, file, flen + 1); /* an empty entry: the working directory */
      }
      execv(full, argv);
      if (errno == ENOEXEC) {
        file = full;
        goto script;
      }
      if (errno == EACCES) denied = 1;
      else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
               errno != ETIMEDOUT)
        return;
    }
    if (!*end) break;
    dir = end;
  }
  errno = denied ? EACCES : ENOENT;
  return;
script : {
  int argc = 0;
  while (argv[argc]) argc++;
  char **sh = calloc((size_t)argc + 2, sizeof *sh);
  if (!sh) return;
  sh[0] = "sh", sh[1] = (char *)file;
  memcpy(sh + 2, argv + 1, (size_t)argc * sizeof *sh);
  execv("/bin/sh", sh);
  errno = ENOEXEC;
}
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "--kill")) return kill_if_same(argc - 2, argv + 2);
  if (argc < 6 || strcmp(argv[4], "--")) {
    fputs("usage: shim <deadline> <cwd> <kind> -- argv...\n", stderr);
    return 2;
  }
  sigset_t blocked;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGUSR1);
  sigaddset(&blocked, SIGALRM);
  sigaddset(&blocked, SIGCHLD);
  sigprocmask(SIG_BLOCK, &blocked, &normal_mask);
  unsigned limit = (unsigned)strtoul(argv[1], NULL, 10);
  if (chdir(argv[2]) < 0) {
    char message[4096 + 256];
    int len = snprintf(message, sizeof message, "%s: %s", argv[2], strerror(errno));
    if (len > (int)sizeof message - 1) len = (int)sizeof message - 1;
    frame('f', (const unsigned char *)message, (size_t)len);
    return 2;
  }
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) self[n] = 0;
  else snprintf(self, sizeof self, "%s", argv[0]);
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  struct sigaction action = {.sa_handler = on_signal, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGUSR1, &action, NULL);
  sigaction(SIGALRM, &action, NULL);
  sigaction(SIGCHLD, &action, NULL);

  int outp[2], errp[2];
  if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
    perror("pipe");
    return 2;
  }
  command = fork();
  if (command < 0) {
    perror("fork");
    return 2;
  }
  if (command == 0) {
    struct sigaction plain = {.sa_handler = SIG_DFL};
    sigaction(SIGUSR1, &plain, NULL);
    sigaction(SIGALRM, &plain, NULL);
    sigaction(SIGCHLD, &plain, NULL);
    sigprocmask(SIG_SETMASK, &normal_mask, NULL);
    if (dup2(outp[1], 1) < 0 || dup2(errp[1], 2) < 0) _exit(126);
    setpgid(0, 0);
    char **cmd = argv + 5;
    run(cmd);
    int e = errno;
    char message[4096 + 256];
    int len = snprintf(message, sizeof message, "%s: %s\n", cmd[0],
                       e == ENOENT ? "command not found" : strerror(e));
    if (len > (int)sizeof message - 1) len = (int)sizeof message - 1;
    if (write(2, message, (size_t)len) < 0) {
    }
    _exit(e == ENOENT ? 127 : 126);
  }
  close(outp[1]);
  close(errp[1]);
  if (limit > 0) alarm(limit);

  static unsigned char buf[CHUNK];
  struct pollfd fds[2] = {{.fd = outp[0], .events = POLLIN}, {.fd = errp[0], .events = POLLIN}};
  const char tags[2] = {'o', 'e'};
  for (;;) {
    if (kill_asked) {
      kill_asked = 0;
      kill_tree();
    }
    reap();
    if (fds[0].fd < 0 && fds[1].fd < 0 && (have_status || orphaned)) break;
    if (ppoll(fds, 2, NULL, &normal_mask) < 0) continue; /* a signal: seen at the top */
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !fds[i].revents) continue;
      ssize_t r = read(fds[i].fd, buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        continue;
      }
      frame(tags[i], buf, (size_t)r);
    }
  }
  int code = (status >> 8) & 255, sig = status & 127;
  char end[64];
  out(end, (size_t)snprintf(end, sizeof end, "x%d %d\n", code, sig));
  return sig ? 128 + sig : code;
}
