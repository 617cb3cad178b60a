/* moonshift.proc: run programs (argv only, never a shell) with an explicit environment,
 * capturing stdout/stderr through pipes; plus signals, users and the process facts. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "modules.h"
#include "support.h"

#define PROCESS_META "moonshift.proc.process"
#define CHUNK (64 * 1024)
#define FALLBACK_PATH "/bin:/usr/bin" /* what execvp searches when PATH is unset */

extern char **environ;

static const struct {
    const char *name;
    int number;
} signals[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},     {"QUIT", SIGQUIT}, {"ILL", SIGILL},   {"TRAP", SIGTRAP},
    {"ABRT", SIGABRT}, {"BUS", SIGBUS},     {"FPE", SIGFPE},   {"KILL", SIGKILL}, {"USR1", SIGUSR1},
    {"SEGV", SIGSEGV}, {"USR2", SIGUSR2},   {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM},
    {"CHLD", SIGCHLD}, {"CONT", SIGCONT},   {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"TTIN", SIGTTIN},
    {"TTOU", SIGTTOU}, {"WINCH", SIGWINCH},
};

struct buf {
    char *data;
    size_t len, cap;
};

/* A started child. Uservalue 1 anchors the stdin string, 2 caches the final result. */
struct process {
    pid_t pid; /* 0 once closed */
    int pidfd; /* readable when the child exits; -1 if the kernel lacks pidfd_open */
    int in_fd; /* our end of the child's stdin, -1 when done */
    int out_fd, err_fd;
    const char *in_data;
    size_t in_len, in_off;
    struct buf out, err;
    int status, reaped, group;
    long max_rss_kb; /* the child's peak resident memory (wait4), 0 if unknown */
};

/* What the child needs, prepared in the parent: after fork only async-signal-safe calls. */
struct request {
    const char *prog;
    char **argv, **envp, **candidates; /* envp NULL: inherit ours */
    const char *cwd;
    const char *in_data;
    size_t in_len;
    int has_stdin, group, set_uid, set_gid, has_timeout;
    int searched; /* the candidates come from PATH */
    uid_t uid;
    gid_t gid;
    lua_Integer timeout;
};

/* Where the child failed, sent to the parent over a close-on-exec pipe. */
enum stage { ST_SETUP, ST_SETGROUPS, ST_SETGID, ST_SETUID, ST_CHDIR, ST_EXEC };
struct report {
    int stage, err;
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The monotonic time ms from now; -1 (forever) for a wait too long to represent. */
static int64_t deadline_after(lua_Integer ms) {
    return ms > INT32_MAX * (int64_t)1000 ? -1 : now_ms() + ms;
}

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static int check_signal(lua_State *L, int arg, int def) {
    if (lua_isnoneornil(L, arg))
        return def;
    if (lua_type(L, arg) == LUA_TNUMBER) {
        lua_Integer n = luaL_checkinteger(L, arg);
        luaL_argcheck(L, n >= 0 && n < NSIG, arg, "no such signal");
        return (int)n;
    }
    const char *name = luaL_checkstring(L, arg);
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (size_t i = 0; i < sizeof signals / sizeof *signals; i++)
        if (strcmp(name, signals[i].name) == 0)
            return signals[i].number;
    return luaL_argerror(L, arg, lua_pushfstring(L, "unknown signal '%s'", name));
}

/* ---- building the request (may raise: everything lives in the anchor table) ---- */

/* Pops the string on top into the anchor table and returns it, NUL-checked. */
static const char *keep(lua_State *L, int anchor, const char *what) {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
        luaL_error(L, "%s contains a NUL byte", what);
    lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
    return s;
}

static char **new_array(lua_State *L, int anchor, size_t n) {
    char **v = lua_newuserdatauv(L, (n + 1) * sizeof *v, 0);
    v[n] = NULL;
    lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
    return v;
}

static const char *const option_names[] = {"env", "stdin", "timeout", "uid",
                                           "gid", "cwd",   "group",   NULL};

static void collect_env(lua_State *L, int opts, int anchor, struct request *r) {
    lua_getfield(L, opts, "env");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    luaL_argcheck(L, lua_istable(L, -1), 2, "env must be a table");
    int env = lua_gettop(L);
    size_t n = 0;
    for (lua_pushnil(L); lua_next(L, env); lua_pop(L, 1))
        n++;
    r->envp = new_array(L, anchor, n);
    size_t i = 0;
    for (lua_pushnil(L); lua_next(L, env); lua_pop(L, 1)) { // [env, key, value]
        int vt = lua_type(L, -1);
        if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER))
            luaL_argerror(L, 2, "env must map names to strings");
        const char *name = lua_tostring(L, -2);
        if (*name == '\0' || strchr(name, '='))
            luaL_argerror(L, 2, lua_pushfstring(L, "bad environment variable name '%s'", name));
        lua_pushvalue(L, -1);
        const char *value = lua_tostring(L, -1);
        size_t vlen = lua_rawlen(L, -1);
        if (strlen(value) != vlen)
            luaL_argerror(L, 2, lua_pushfstring(L, "env %s contains a NUL byte", name));
        lua_pushfstring(L, "%s=%s", name, value);
        r->envp[i++] = (char *)keep(L, anchor, "env");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* The paths execvp would try, in order, using the PATH the child will have. */
static void collect_candidates(lua_State *L, int opts, int anchor, struct request *r) {
    const char *path = NULL;
    if (r->envp) {
        lua_getfield(L, opts, "env");
        lua_getfield(L, -1, "PATH");
        path = lua_tostring(L, -1);
        if (path)
            keep(L, anchor, "PATH");
        else
            lua_pop(L, 1);
        lua_pop(L, 1);
    } else {
        path = getenv("PATH");
    }
    if (path == NULL)
        path = FALLBACK_PATH;
    r->searched = strchr(r->prog, '/') == NULL;
    if (!r->searched) {
        r->candidates = new_array(L, anchor, 1);
        r->candidates[0] = (char *)r->prog;
        return;
    }
    size_t n = 1;
    for (const char *p = path; *p; p++)
        n += *p == ':';
    r->candidates = new_array(L, anchor, n);
    const char *p = path;
    for (size_t i = 0; i < n; i++) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        lua_pushlstring(L, p, len ? len : 1);
        if (len == 0) /* an empty element means the current directory */
            lua_pushfstring(L, "./%s", r->prog);
        else
            lua_pushfstring(L, "%s/%s", lua_tostring(L, -1), r->prog);
        lua_remove(L, -2);
        r->candidates[i] = (char *)keep(L, anchor, "PATH");
        p = end ? end + 1 : p + len;
    }
}

/* Checks argv (arg 1) and opts (arg 2) and fills r; pushes one anchor table. */
static void collect(lua_State *L, int allow_timeout, struct request *r) {
    memset(r, 0, sizeof *r);
    luaL_checktype(L, 1, LUA_TTABLE);
    int has_opts = !lua_isnoneornil(L, 2);
    if (has_opts)
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_newtable(L);
    int anchor = lua_gettop(L);

    size_t argc = (size_t)lua_rawlen(L, 1);
    luaL_argcheck(L, argc > 0, 1, "argv must name a program");
    r->argv = new_array(L, anchor, argc);
    for (size_t i = 0; i < argc; i++) {
        int t = lua_rawgeti(L, 1, (lua_Integer)i + 1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            luaL_argerror(L, 1, "argv must be an array of strings");
        lua_tostring(L, -1);
        r->argv[i] = (char *)keep(L, anchor, "argument");
    }
    r->prog = r->argv[0];
    luaL_argcheck(L, *r->prog != '\0', 1, "program name is empty");

    if (has_opts) {
        for (lua_pushnil(L); lua_next(L, 2); lua_pop(L, 1)) {
            const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            int known = 0;
            for (int i = 0; option_names[i]; i++)
                known |= strcmp(key, option_names[i]) == 0 && (allow_timeout || i != 2);
            if (!known)
                luaL_argerror(L, 2, lua_pushfstring(L, "unknown option '%s'", key));
        }
        collect_env(L, 2, anchor, r);
        if (lua_getfield(L, 2, "stdin") != LUA_TNIL) {
            luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 2, "stdin must be a string");
            r->in_data = lua_tolstring(L, -1, &r->in_len);
            r->has_stdin = 1; /* anchored by opts; spawn keeps it as a uservalue */
        }
        if (lua_getfield(L, 2, "cwd") != LUA_TNIL) {
            luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 2, "cwd must be a string");
            r->cwd = lua_tostring(L, -1);
        }
        if (lua_getfield(L, 2, "timeout") != LUA_TNIL) {
            luaL_argcheck(L, lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0, 2,
                          "timeout must be a non-negative integer (milliseconds)");
            r->timeout = lua_tointeger(L, -1);
            r->has_timeout = 1;
        }
        if (lua_getfield(L, 2, "uid") != LUA_TNIL) {
            luaL_argcheck(L, lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0, 2, "bad uid");
            r->uid = (uid_t)lua_tointeger(L, -1);
            r->set_uid = 1;
        }
        if (lua_getfield(L, 2, "gid") != LUA_TNIL) {
            luaL_argcheck(L, lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0, 2, "bad gid");
            r->gid = (gid_t)lua_tointeger(L, -1);
            r->set_gid = 1;
        }
        /* uid alone would keep our (root's) groups in the child. */
        luaL_argcheck(L, r->set_gid || !r->set_uid, 2, "uid needs gid as well");
        lua_getfield(L, 2, "group");
        r->group = lua_toboolean(L, -1);
        lua_settop(L, anchor);
    }
    collect_candidates(L, 2, anchor, r);
}

/* ---- starting the child ---- */

static _Noreturn void child_fail(int ctl, enum stage stage, int err) {
    struct report rep = {stage, err};
    ssize_t n;
    do
        n = write(ctl, &rep, sizeof rep);
    while (n < 0 && errno == EINTR);
    _exit(127);
}

static _Noreturn void child(const struct request *r, const int fds[3], int ctl, int maxfd) {
    /* Dispositions set to SIG_IGN and the blocked mask survive exec; start the program clean. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL); /* fails harmlessly for KILL, STOP and reserved ones */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (r->group)
        setpgid(0, 0);
    for (int i = 0; i < 3; i++) /* the parent made sure fds[i] >= 3 */
        if (dup2(fds[i], i) < 0)
            child_fail(ctl, ST_SETUP, errno);
    if (r->set_gid) {
        if (setgroups(1, &r->gid) != 0)
            child_fail(ctl, ST_SETGROUPS, errno);
        if (setgid(r->gid) != 0)
            child_fail(ctl, ST_SETGID, errno);
    }
    if (r->set_uid && setuid(r->uid) != 0)
        child_fail(ctl, ST_SETUID, errno);
    /* After dropping privileges, so the directory is checked as the user who runs in it. */
    if (r->cwd && chdir(r->cwd) != 0)
        child_fail(ctl, ST_CHDIR, errno);
    /* Descriptors Lua opened (io.open does not use O_CLOEXEC) must not reach the program. */
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
        for (int fd = 3; fd < maxfd; fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);

    /* Like execvp: skip directories where the program is missing; if it was found somewhere
     * but not executable, say so rather than "not found". Unlike execvp, a PATH directory we
     * may not search counts as "not found", and there is no /bin/sh fallback on ENOEXEC. */
    char **envp = r->envp ? r->envp : environ;
    int err = ENOENT, denied = 0;
    for (char **c = r->candidates; *c; c++) {
        execve(*c, r->argv, envp);
        err = errno;
        struct stat st;
        if (err == EACCES && r->searched && stat(*c, &st) != 0)
            err = ENOENT;
        if (err == EACCES)
            denied = 1;
        else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV &&
                 err != ETIMEDOUT)
            child_fail(ctl, ST_EXEC, err);
    }
    child_fail(ctl, ST_EXEC, denied ? EACCES : err);
}

/* Our descriptors must not be 0..2, or dup2 in the child could clobber one with another. */
static int move_high(int fd) {
    if (fd < 0 || fd > 2)
        return fd;
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int err = errno;
    close(fd);
    errno = err;
    return high;
}

static int make_pipe(int p[2]) {
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    p[0] = move_high(p[0]);
    p[1] = move_high(p[1]);
    return p[0] < 0 || p[1] < 0 ? -1 : 0;
}

/* Starts r's child into p. Returns 0, or pushes nil, msg, code and returns 3. */
static int start(lua_State *L, struct process *p, const struct request *r) {
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, ctl[2] = {-1, -1};
    struct report rep = {ST_SETUP, 0};
    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd < 0 || maxfd > 65536)
        maxfd = 65536;

    if (r->has_stdin) {
        if (make_pipe(in) != 0)
            goto fail;
    } else if ((in[0] = move_high(open("/dev/null", O_RDONLY | O_CLOEXEC))) < 0) {
        goto fail;
    }
    if (make_pipe(out) != 0 || make_pipe(err) != 0 || make_pipe(ctl) != 0)
        goto fail;

    pid_t pid = fork();
    if (pid < 0)
        goto fail;
    if (pid == 0) {
        int fds[3] = {in[0], out[1], err[1]};
        child(r, fds, ctl[1], (int)maxfd);
    }
    if (r->group)
        setpgid(pid, pid); /* also from here: a kill right after spawn must reach the group */
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    close_fd(&ctl[1]);
    ssize_t n;
    do /* EOF means exec succeeded: the pipe was close-on-exec */
        n = read(ctl[0], &rep, sizeof rep);
    while (n < 0 && errno == EINTR);
    close_fd(&ctl[0]);
    if (n == (ssize_t)sizeof rep) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        errno = rep.err;
        goto fail;
    }

    p->pid = pid;
    p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    p->in_fd = in[1];
    p->out_fd = out[0];
    p->err_fd = err[0];
    p->group = r->group;
    p->in_data = r->in_data;
    p->in_len = r->in_len;
    for (int *fd = &p->in_fd; fd <= &p->err_fd; fd++)
        if (*fd >= 0)
            fcntl(*fd, F_SETFL, fcntl(*fd, F_GETFL) | O_NONBLOCK);
    return 0;

fail:;
    int e = errno;
    int *all[] = {&in[0], &in[1], &out[0], &out[1], &err[0], &err[1], &ctl[0], &ctl[1]};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        close_fd(all[i]);
    switch (rep.stage) {
    case ST_SETGROUPS:
    case ST_SETGID:
        lua_pushfstring(L, "%s: %s %d", r->prog, rep.stage == ST_SETGID ? "setgid" : "setgroups",
                        (int)r->gid);
        break;
    case ST_SETUID:
        lua_pushfstring(L, "%s: setuid %d", r->prog, (int)r->uid);
        break;
    case ST_CHDIR:
        lua_pushfstring(L, "%s: chdir %s", r->prog, r->cwd);
        break;
    case ST_EXEC:
        lua_pushstring(L, r->prog);
        break;
    default:
        lua_pushfstring(L, "%s: cannot start", r->prog);
    }
    return support_error(L, e, lua_tostring(L, -1));
}

/* ---- talking to the child ---- */

/* Reads what is available into b. 1: got data, 0: nothing now or EOF (fd closed),
 * -1: out of memory. */
static int pull(struct buf *b, int *fd, size_t max) {
    if (b->cap - b->len < CHUNK) {
        size_t cap = b->cap ? b->cap * 2 : 2 * CHUNK;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    ssize_t n = read(*fd, b->data + b->len, max < CHUNK ? max : CHUNK);
    if (n > 0) {
        b->len += (size_t)n;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    close_fd(fd); /* EOF, or an error we can only treat as one */
    return 0;
}

/* After the child is reaped: takes exactly what was already in the pipe (all the child
 * wrote), not what a grandchild that inherited the pipe keeps writing. */
static int drain(struct buf *b, int *fd) {
    int avail = 0;
    if (*fd >= 0 && ioctl(*fd, FIONREAD, &avail) != 0)
        avail = 0;
    while (avail > 0 && *fd >= 0) {
        size_t before = b->len;
        int r = pull(b, fd, (size_t)avail);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        avail -= (int)(b->len - before);
    }
    close_fd(fd);
    return 0;
}

static void push_stdin(struct process *p) {
    if (p->in_fd < 0)
        return;
    if (p->in_off < p->in_len) {
        /* A child that exits without reading all of its stdin must not kill us with SIGPIPE:
         * block it around the write and swallow the one the write raised. */
        sigset_t pipe_set, old;
        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
        size_t len = p->in_len - p->in_off;
        ssize_t n = write(p->in_fd, p->in_data + p->in_off, len < CHUNK ? len : CHUNK);
        int e = errno;
        if (n < 0 && e == EPIPE && !sigismember(&old, SIGPIPE)) {
            struct timespec zero = {0, 0};
            sigtimedwait(&pipe_set, NULL, &zero);
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (n > 0)
            p->in_off += (size_t)n;
        else if (n < 0 && e != EAGAIN && e != EINTR)
            p->in_off = p->in_len; /* the child stopped reading: give up on the rest */
    }
    if (p->in_off >= p->in_len)
        close_fd(&p->in_fd); /* EOF for the child */
}

static void try_reap(struct process *p, int flags) {
    if (p->reaped)
        return;
    pid_t r;
    struct rusage ru;
    while ((r = wait4(p->pid, &p->status, flags, &ru)) < 0 && errno == EINTR) {
    }
    if (r == p->pid) {
        p->reaped = 1;
        p->max_rss_kb = ru.ru_maxrss;
    } else if (r < 0) { /* ECHILD: someone else reaped it (SIGCHLD ignored); status unknown */
        p->reaped = 1;
        p->status = -1;
    }
}

/* Runs the child's I/O until it has exited (0) or the deadline passes (1; -1: forever).
 * Returns -1 with errno on failure. Once the child is reaped, only the output already in
 * the pipes is collected: a grandchild (a daemon started by pg_ctl) may hold them open
 * and write forever. */
static int pump(struct process *p, int64_t deadline) {
    int expired = 0;
    for (;;) {
        try_reap(p, WNOHANG);
        if (p->reaped) {
            int r = drain(&p->out, &p->out_fd) | drain(&p->err, &p->err_fd);
            close_fd(&p->in_fd);
            close_fd(&p->pidfd);
            errno = ENOMEM;
            return r;
        }
        if (expired)
            return 1;
        struct pollfd fds[4];
        int n = 0, in = -1, out = -1, err = -1;
        if (p->in_fd >= 0)
            fds[in = n++] = (struct pollfd){p->in_fd, POLLOUT, 0};
        if (p->out_fd >= 0)
            fds[out = n++] = (struct pollfd){p->out_fd, POLLIN, 0};
        if (p->err_fd >= 0)
            fds[err = n++] = (struct pollfd){p->err_fd, POLLIN, 0};
        if (p->pidfd >= 0)
            fds[n++] = (struct pollfd){p->pidfd, POLLIN, 0};
        int64_t timeout = -1;
        if (deadline >= 0) {
            timeout = deadline - now_ms();
            timeout = timeout < 0 ? 0 : timeout > INT_MAX ? INT_MAX : timeout;
        }
        if (p->pidfd < 0 && (timeout < 0 || timeout > 10))
            timeout = 10; /* no pidfd: notice the exit by polling waitpid */
        if (poll(fds, (nfds_t)n, (int)timeout) < 0 && errno != EINTR)
            return -1;
        if (in >= 0 && fds[in].revents)
            push_stdin(p);
        if (out >= 0 && fds[out].revents && pull(&p->out, &p->out_fd, CHUNK) < 0)
            return errno = ENOMEM, -1;
        if (err >= 0 && fds[err].revents && pull(&p->err, &p->err_fd, CHUNK) < 0)
            return errno = ENOMEM, -1;
        expired = deadline >= 0 && now_ms() >= deadline;
    }
}

static void signal_child(struct process *p, int sig) { kill(p->group ? -p->pid : p->pid, sig); }

/* Kills a still-running child, reaps it and frees everything: close(), __close, __gc. */
static void release(struct process *p) {
    if (p->pid > 0 && !p->reaped) {
        signal_child(p, SIGKILL);
        try_reap(p, 0);
    }
    close_fd(&p->in_fd);
    close_fd(&p->out_fd);
    close_fd(&p->err_fd);
    close_fd(&p->pidfd);
    free(p->out.data);
    free(p->err.data);
    memset(&p->out, 0, sizeof p->out);
    memset(&p->err, 0, sizeof p->err);
    p->pid = 0;
}

static struct process *new_process(lua_State *L) {
    struct process *p = lua_newuserdatauv(L, sizeof *p, 2);
    memset(p, 0, sizeof *p);
    p->pidfd = p->in_fd = p->out_fd = p->err_fd = -1;
    luaL_setmetatable(L, PROCESS_META);
    return p;
}

/* Pushes { code, signal, stdout, stderr, timed_out, pid, max_rss_kb } and caches it in uservalue 2 of
 * the process at idx; the output buffers are freed, the strings now hold the output. */
static void push_outcome(lua_State *L, int idx, struct process *p, int timed_out) {
    lua_createtable(L, 0, 6);
    if (p->status >= 0 && WIFEXITED(p->status)) {
        lua_pushinteger(L, WEXITSTATUS(p->status));
        lua_setfield(L, -2, "code");
    } else if (p->status >= 0 && WIFSIGNALED(p->status)) {
        lua_pushinteger(L, WTERMSIG(p->status));
        lua_setfield(L, -2, "signal");
    }
    lua_pushlstring(L, p->out.data ? p->out.data : "", p->out.len);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, p->err.data ? p->err.data : "", p->err.len);
    lua_setfield(L, -2, "stderr");
    lua_pushboolean(L, timed_out);
    lua_setfield(L, -2, "timed_out");
    lua_pushinteger(L, p->pid);
    lua_setfield(L, -2, "pid");
    if (p->max_rss_kb > 0) {
        lua_pushinteger(L, p->max_rss_kb);
        lua_setfield(L, -2, "max_rss_kb");
    }
    free(p->out.data);
    free(p->err.data);
    memset(&p->out, 0, sizeof p->out);
    memset(&p->err, 0, sizeof p->err);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx, 2);
}

/* proc.run(argv [, opts]) -> result | nil, msg, code */
static int proc_run(lua_State *L) {
    struct request r;
    collect(L, 1, &r);
    struct process *p = new_process(L);
    int idx = lua_gettop(L);
    if (start(L, p, &r) != 0)
        return 3;
    int timed_out = 0;
    int rc = pump(p, r.has_timeout ? deadline_after(r.timeout) : -1);
    if (rc == 1) {
        timed_out = 1;
        signal_child(p, SIGKILL);
        rc = pump(p, -1);
    }
    if (rc < 0) {
        int e = errno;
        release(p);
        return support_error(L, e, r.prog);
    }
    push_outcome(L, idx, p, timed_out);
    release(p);
    return 1;
}

/* proc.spawn(argv [, opts]) -> process | nil, msg, code */
static int proc_spawn(lua_State *L) {
    struct request r;
    collect(L, 0, &r);
    struct process *p = new_process(L);
    if (r.has_stdin) {
        lua_getfield(L, 2, "stdin");
        lua_setiuservalue(L, -2, 1); /* keeps p->in_data alive until it is written */
    }
    if (start(L, p, &r) != 0)
        return 3;
    push_stdin(p); /* a short stdin fits in the pipe now, before anyone waits */
    return 1;
}

static struct process *check_process(lua_State *L) {
    struct process *p = luaL_checkudata(L, 1, PROCESS_META);
    if (p->pid == 0)
        luaL_error(L, "attempt to use a closed process");
    return p;
}

static int process_pid(lua_State *L) {
    lua_pushinteger(L, check_process(L)->pid);
    return 1;
}

static int process_kill(lua_State *L) {
    struct process *p = check_process(L);
    int sig = check_signal(L, 2, SIGTERM);
    try_reap(p, WNOHANG);
    if (p->reaped) /* its pid may already belong to someone else */
        return support_errorf(L, ESRCH, "process %d has exited", (int)p->pid);
    if (kill(p->group ? -p->pid : p->pid, sig) != 0) {
        int err = errno;
        return support_errorf(L, err, "kill %d", (int)p->pid);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* handle:wait([timeout_ms]) -> result | nil, "timeout", "ETIMEDOUT" */
static int process_wait(lua_State *L) {
    struct process *p = check_process(L);
    if (lua_getiuservalue(L, 1, 2) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    int64_t deadline = -1;
    if (!lua_isnoneornil(L, 2)) {
        lua_Integer ms = luaL_checkinteger(L, 2);
        luaL_argcheck(L, ms >= 0, 2, "timeout must be >= 0");
        deadline = deadline_after(ms);
    }
    int rc = pump(p, deadline);
    if (rc < 0) {
        int err = errno;
        return support_errorf(L, err, "process %d", (int)p->pid);
    }
    if (rc == 1) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        lua_pushliteral(L, "ETIMEDOUT");
        return 3;
    }
    push_outcome(L, 1, p, 0);
    return 1;
}

static int process_running(lua_State *L) {
    struct process *p = check_process(L);
    try_reap(p, WNOHANG);
    lua_pushboolean(L, !p->reaped);
    return 1;
}

static int process_close(lua_State *L) {
    release(luaL_checkudata(L, 1, PROCESS_META));
    return 0;
}

static int process_tostring(lua_State *L) {
    struct process *p = luaL_checkudata(L, 1, PROCESS_META);
    if (p->pid == 0)
        lua_pushliteral(L, "moonshift.proc.process (closed)");
    else
        lua_pushfstring(L, "moonshift.proc.process (%d)", (int)p->pid);
    return 1;
}

/* ---- plain functions ---- */

static int proc_kill(lua_State *L) {
    lua_Integer pid = luaL_checkinteger(L, 1);
    /* 0 and -1 would signal our own group or every process we may signal. */
    luaL_argcheck(L, pid != 0 && pid != -1 && pid >= INT_MIN && pid <= INT_MAX, 1, "bad pid");
    int sig = check_signal(L, 2, SIGTERM);
    if (kill((pid_t)pid, sig) != 0) {
        int err = errno;
        return support_errorf(L, err, "kill %I", (LUAI_UACINT)pid);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int proc_getpid(lua_State *L) {
    lua_pushinteger(L, getpid());
    return 1;
}

static int proc_getuid(lua_State *L) {
    lua_pushinteger(L, getuid());
    return 1;
}

static int proc_sleep(lua_State *L) {
    lua_Number ms = luaL_checknumber(L, 1);
    luaL_argcheck(L, ms >= 0 && ms < 1e15, 1, "duration must be within 0..1e15 ms");
    lua_Number secs = ms / 1000;
    struct timespec ts;
    ts.tv_sec = (time_t)secs;
    ts.tv_nsec = (long)((secs - (lua_Number)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return 0;
}

static int proc_environ(lua_State *L) {
    lua_newtable(L);
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL)
            continue;
        lua_pushlstring(L, *e, (size_t)(eq - *e));
        lua_pushstring(L, eq + 1);
        lua_rawset(L, -3);
    }
    return 1;
}

static int proc_getpwnam(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    errno = 0;
    struct passwd *pw = getpwnam(name);
    if (pw == NULL) {
        int err = errno;
        /* "Not found" comes back as 0 or, depending on the NSS module, ENOENT/ESRCH/... */
        if (err == 0 || err == ENOENT || err == ESRCH || err == EBADF || err == EPERM) {
            lua_pushnil(L);
            lua_pushfstring(L, "user %s: no such user", name);
            lua_pushliteral(L, "ENOENT");
            return 3;
        }
        return support_errorf(L, err, "user %s", name);
    }
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, pw->pw_uid);
    lua_setfield(L, -2, "uid");
    lua_pushinteger(L, pw->pw_gid);
    lua_setfield(L, -2, "gid");
    lua_pushstring(L, pw->pw_dir);
    lua_setfield(L, -2, "dir");
    lua_pushstring(L, pw->pw_name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, pw->pw_shell);
    lua_setfield(L, -2, "shell");
    return 1;
}

static void create_meta(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"pid", process_pid},         {"kill", process_kill},   {"wait", process_wait},
        {"running", process_running}, {"close", process_close}, {NULL, NULL},
    };
    static const luaL_Reg metamethods[] = {
        {"__gc", process_close},
        {"__close", process_close},
        {"__tostring", process_tostring},
        {NULL, NULL},
    };
    support_new_meta(L, PROCESS_META, methods, metamethods);
}

int luaopen_moonshift_proc(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"run", proc_run},         {"spawn", proc_spawn},       {"kill", proc_kill},
        {"getpid", proc_getpid},   {"getuid", proc_getuid},     {"sleep", proc_sleep},
        {"environ", proc_environ}, {"getpwnam", proc_getpwnam}, {NULL, NULL},
    };
    create_meta(L);
    luaL_newlib(L, funcs);
    lua_createtable(L, 0, (int)(sizeof signals / sizeof *signals));
    for (size_t i = 0; i < sizeof signals / sizeof *signals; i++) {
        lua_pushinteger(L, signals[i].number);
        lua_setfield(L, -2, signals[i].name);
    }
    lua_setfield(L, -2, "signals");
    return 1;
}
