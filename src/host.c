/* moonshift.host: what the host process offers the tool: memory accounting and a cap,
 * signal handling, the hook watchdog, versions. */
#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "modules.h"

#ifndef MOONSHIFT_VERSION
#define MOONSHIFT_VERSION "0.0.0-dev"
#endif

/* Memory accounting for the whole state; a limit of 0 means none. Hooks get a cap
 * (lowered around their calls) so a runaway table fails with "not enough memory"
 * instead of the host being OOM-killed. */
struct alloc_state {
    size_t used;
    size_t limit;
};

static struct alloc_state alloc_state = {0, 0};

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct alloc_state *st = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        st->used -= old;
        return NULL;
    }
    if (st->limit && nsize > old && st->used - old + nsize > st->limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        st->used = st->used - old + nsize;
    return p;
}

lua_State *host_newstate(void) { return lua_newstate(capped_alloc, &alloc_state); }

#ifndef MOONSHIFT_SANITIZE /* LeakSanitizer would take the memory kept here for leaks */
/* The allocator lua_close runs with: every finalizer still runs (connections say goodbye
 * to the server, files are flushed and closed), but the memory is left to the exit instead
 * of freed object by object, which took 7 ms after a `status` of 10,000 migrations. */
static void *keep_at_exit(void *ud, void *ptr, size_t osize, size_t nsize) {
    if (nsize == 0)
        return NULL;
    return capped_alloc(ud, ptr, osize, nsize);
}
#endif

void host_close(lua_State *L) {
#ifndef MOONSHIFT_SANITIZE
    lua_setallocf(L, keep_at_exit, &alloc_state);
#endif
    lua_close(L);
}

/* host.memory_limit([bytes]) -> previous limit; host.memory_used() -> bytes */
static int host_memory_limit(lua_State *L) {
    size_t previous = alloc_state.limit;
    if (!lua_isnoneornil(L, 1)) {
        lua_Integer n = luaL_checkinteger(L, 1);
        luaL_argcheck(L, n >= 0, 1, "limit must be >= 0");
        alloc_state.limit = (size_t)n;
    }
    lua_pushinteger(L, (lua_Integer)previous);
    return 1;
}

static int host_memory_used(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)alloc_state.used);
    return 1;
}

/* Ctrl-C and SIGTERM: the first cancels the running statement (the runner then rolls
 * back, releases the lock and writes the log); a second one exits at once, and the
 * server rolls back when the connection drops. */
static volatile sig_atomic_t signal_count = 0;
static volatile sig_atomic_t last_signal = 0;

static void on_signal(int sig) {
    last_signal = sig;
    if (++signal_count >= 2)
        _exit(128 + sig);
    pg_cancel_from_signal();
}

int host_signal_count(void) { return (int)signal_count; }

/* host.catch_signals(): install the handlers (the CLI calls it; scripts do not). */
static int host_catch_signals(lua_State *L) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: a sleeping lock wait wakes up */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    (void)L;
    return 0;
}

/* The hook watchdog. Lua's count hook stops Lua code at its time limit, but not a C function
 * that never returns (a pathological string.find) nor a blocked query. At the limit the
 * running query is cancelled (the hook then sees an error); if the process is still there
 * WATCHDOG_GRACE_S later, it exits: the server rolls back the open transaction. */
#define WATCHDOG_GRACE_S 3
static volatile sig_atomic_t watchdog_stage = 0;
static const char default_watchdog_msg[] =
    "moonshift: a hook ran past its time limit inside a C function "
    "and could not be stopped; exiting (the server rolls back the "
    "open transaction)\n";
/* What the watchdog prints and exits with: a hook's failure by default (7); loading a
 * companion or migrate.lua gives its own (exit 2, bad input). */
static char watchdog_msg[512];
static size_t watchdog_len = 0;
static int watchdog_code = 7;

static void on_watchdog(int sig) {
    (void)sig;
    if (watchdog_stage == 0) {
        watchdog_stage = 1;
        pg_cancel_from_signal();
        struct itimerval grace = {{0, 0}, {WATCHDOG_GRACE_S, 0}};
        setitimer(ITIMER_REAL, &grace, NULL);
        return;
    }
    ssize_t ignored = write(STDERR_FILENO, watchdog_msg, watchdog_len);
    (void)ignored;
    _exit(watchdog_code);
}

/* host.watchdog(ms [, message, exit_code]) arms the watchdog (0 disarms) and returns
 * whether the previous one fired. */
static int host_watchdog(lua_State *L) {
    lua_Integer ms = luaL_checkinteger(L, 1);
    size_t len = 0;
    const char *msg = luaL_optlstring(L, 2, default_watchdog_msg, &len);
    lua_Integer code = luaL_optinteger(L, 3, 7);
    struct itimerval off = {{0, 0}, {0, 0}}, on = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    int fired = watchdog_stage != 0;
    watchdog_stage = 0;
    if (ms > 0) {
        /* the timer is off: the handler cannot read these while they change */
        watchdog_len = len < sizeof watchdog_msg ? len : sizeof watchdog_msg;
        memcpy(watchdog_msg, msg, watchdog_len);
        watchdog_code = (int)code;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_watchdog;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        sigaction(SIGALRM, &sa, NULL);
        on.it_value.tv_sec = (time_t)(ms / 1000);
        on.it_value.tv_usec = (suseconds_t)(ms % 1000) * 1000;
        setitimer(ITIMER_REAL, &on, NULL);
    }
    lua_pushboolean(L, fired);
    return 1;
}

/* host.interrupted() -> "INT" | "TERM" | nil, and the exit code for it (130, 143) */
static int host_interrupted(lua_State *L) {
    int sig = last_signal;
    if (!sig)
        return 0;
    lua_pushstring(L, sig == SIGINT ? "INT" : sig == SIGTERM ? "TERM" : "?");
    lua_pushinteger(L, 128 + sig);
    return 2;
}

int luaopen_moonshift_host(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"memory_limit", host_memory_limit},   {"memory_used", host_memory_used},
        {"catch_signals", host_catch_signals}, {"interrupted", host_interrupted},
        {"watchdog", host_watchdog},           {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    lua_pushliteral(L, MOONSHIFT_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushliteral(L, LUA_RELEASE);
    lua_setfield(L, -2, "lua_version");
#ifdef MOONSHIFT_SANITIZE
    lua_pushboolean(L, 1);
#else
    lua_pushboolean(L, 0);
#endif
    lua_setfield(L, -2, "sanitized");
    return 1;
}
