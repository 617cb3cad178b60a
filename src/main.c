/* The moonshift host: a Lua state with the bindings and the embedded tool, run under pcall. */
#include <lauxlib.h>
#include <lua-cjson.h>
#include <lua.h>
#include <lualib.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include "embedded.h"
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

static void on_watchdog(int sig) {
    (void)sig;
    if (watchdog_stage == 0) {
        watchdog_stage = 1;
        pg_cancel_from_signal();
        struct itimerval grace = {{0, 0}, {WATCHDOG_GRACE_S, 0}};
        setitimer(ITIMER_REAL, &grace, NULL);
        return;
    }
    static const char msg[] = "moonshift: a hook ran past its time limit inside a C function "
                              "and could not be stopped; exiting (the server rolls back the "
                              "open transaction)\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    _exit(7); /* the hook failure exit code */
}

/* host.watchdog(ms) arms the watchdog (0 disarms) and returns whether the previous one fired. */
static int host_watchdog(lua_State *L) {
    lua_Integer ms = luaL_checkinteger(L, 1);
    struct itimerval off = {{0, 0}, {0, 0}}, on = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    int fired = watchdog_stage != 0;
    watchdog_stage = 0;
    if (ms > 0) {
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

static int luaopen_moonshift_host(lua_State *L) {
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

/* package.preload loader for an embedded module: upvalue 1 is its index. */
static int load_embedded(lua_State *L) {
    const struct embedded_module *m = &embedded_modules[lua_tointeger(L, lua_upvalueindex(1))];
    if (luaL_loadbufferx(L, m->data, m->size, m->chunkname, "b") != LUA_OK)
        return lua_error(L);
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    return 1;
}

static void preload(lua_State *L, const char *name, lua_CFunction open) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, open);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* Runs under pcall: allocation failures while opening libraries are errors, not panics. */
static int bootstrap(lua_State *L) {
    luaL_openlibs(L);
    preload(L, "moonshift.host", luaopen_moonshift_host);
    preload(L, "moonshift.pg", luaopen_moonshift_pg);
    preload(L, "moonshift.hash", luaopen_moonshift_hash);
    preload(L, "moonshift.proc", luaopen_moonshift_proc);
    preload(L, "moonshift.fs", luaopen_moonshift_fs);
    preload(L, "moonshift.sql", luaopen_moonshift_sql);
    preload(L, "moonshift.redact", luaopen_moonshift_redact);
    preload(L, "moonshift.records", luaopen_moonshift_records);
    preload(L, "cjson", luaopen_cjson);

    const char *dir = getenv("MOONSHIFT_LUA_DIR");
    if (dir && *dir) {
        /* Development: load the modules from the source tree, before the system path. */
        lua_getglobal(L, "package");
        lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
        lua_getfield(L, -2, "path");
        lua_concat(L, 2);
        lua_setfield(L, -2, "path");
        lua_pop(L, 1);
        return 0;
    }
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE); // [preload]
    for (lua_Integer i = 0; embedded_modules[i].name; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, load_embedded, 1);
        lua_setfield(L, -2, embedded_modules[i].name);
    }
    lua_pop(L, 1);
    return 0;
}

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Mode "--run-lua FILE ARGS...": run a plain Lua script with `arg`, as lua(1) would.
 * The specs (busted) and benchmarks use this to run with the real bindings. */
static int run_script(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    lua_createtable(L, argc, 2);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 2); /* argv[2] is the script: arg[0] */
    }
    lua_setglobal(L, "arg");
    if (luaL_loadfilex(L, argv[2], "t") != LUA_OK)
        return lua_error(L);
    for (int i = 3; i < argc; i++)
        lua_pushstring(L, argv[i]);
    lua_call(L, argc - 3, 1);
    return 1;
}

/* A strict _G: reading or assigning an undeclared global is a bug, so it raises. */
static int undeclared_global(lua_State *L) {
    return luaL_error(L, "undeclared global '%s'", lua_tostring(L, 2));
}
static void make_globals_strict(lua_State *L) {
    lua_pushglobaltable(L);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, undeclared_global);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, undeclared_global);
    lua_setfield(L, -2, "__newindex");
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
}

/* Normal mode: exit code = require("moonshift.cli").main(args). */
static int run_cli(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    make_globals_strict(L); /* scripts (--run-lua: busted, bench) keep a plain one */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moonshift.cli");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_call(L, 1, 1);
    return 1;
}

/* MOONSHIFT_PROFILE=FILE (development): every 1 ms of CPU time, the next Lua instruction of
 * the main thread records its source line; time in C functions lands on the line that called
 * them. Counts go to FILE at exit, most first. */
static lua_State *profiled;
static void profile_hook(lua_State *L, lua_Debug *ar) {
    lua_sethook(L, NULL, 0, 0);
    if (!lua_getinfo(L, "Sl", ar))
        return;
    lua_getfield(L, LUA_REGISTRYINDEX, "moonshift.profile");
    lua_pushfstring(L, "%s:%d", ar->short_src, ar->currentline);
    lua_pushvalue(L, -1);
    lua_Integer n = lua_rawget(L, -3) == LUA_TNUMBER ? lua_tointeger(L, -1) : 0;
    lua_pop(L, 1);
    lua_pushinteger(L, n + 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}
static void on_profile_tick(int sig) {
    (void)sig;
    lua_sethook(profiled, profile_hook, LUA_MASKCOUNT, 1); /* allowed in a signal handler */
}
static void profile_start(lua_State *L) {
    if (getenv("MOONSHIFT_PROFILE") == NULL)
        return;
    profiled = L;
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "moonshift.profile");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_profile_tick;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGPROF, &sa, NULL);
    struct itimerval every = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_PROF, &every, NULL);
}
static void profile_write(lua_State *L) {
    const char *path = getenv("MOONSHIFT_PROFILE");
    if (path == NULL)
        return;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_PROF, &off, NULL);
    lua_sethook(L, NULL, 0, 0);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return;
    lua_getfield(L, LUA_REGISTRYINDEX, "moonshift.profile");
    for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1))
        fprintf(f, "%lld %s\n", (long long)lua_tointeger(L, -1), lua_tostring(L, -2));
    lua_pop(L, 1);
    fclose(f);
}

static void harden(void) {
    /* A core file of a migration run could hold connection secrets (R11). */
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
#ifndef MOONSHIFT_SANITIZE
    /* Not under the sanitizers: LeakSanitizer needs to read /proc/self. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif
}

/* A run is short and allocates many small objects: keep freed memory instead of giving it
 * back to the kernel and faulting it in again, and grow the heap in large steps whose first
 * one uses transparent huge pages where the system allows them on request (what glibc's
 * glibc.malloc.hugetlb=1 tunable does): on a virtual machine a page fault can cost ~10
 * microseconds, and `status` of 10,000 migrations faulted ~7,000 pages, a fifth of its time. */
#define HEAP_STEP (32 << 20)
#define HUGE_PAGE (2 << 20)
static void *heap_head;
static void tune_heap(void) {
    mallopt(M_TOP_PAD, HEAP_STEP);
    mallopt(M_TRIM_THRESHOLD, 2 * HEAP_STEP);
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    void *first = malloc(512 << 10); /* more than the heap libc started with: takes a step */
    if (first == NULL)
        return;
    char *top = sbrk(0);
    uintptr_t base = (uintptr_t)first;
    uintptr_t start = (base + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    if (top != (char *)-1 && (uintptr_t)top > start)
        madvise((void *)start, (uintptr_t)top - start, MADV_HUGEPAGE); /* advice only */
    free(first);
    /* The heap's head, below the first huge page boundary, can only have small pages: one
     * block kept for the whole run fills it, so later blocks (a 2 MB cache file read in
     * one piece, say) land in huge pages. Its pages are never touched, so cost nothing. */
    if (start > base + 64)
        heap_head = malloc(start - base - 32);
}

int main(int argc, char **argv) {
    harden();
    tune_heap();
    hash_warm_up_begin();
    lua_State *L = lua_newstate(capped_alloc, &alloc_state);
    if (L == NULL) {
        fputs("moonshift: cannot create Lua state: not enough memory\n", stderr);
        return 1;
    }
    /* Most objects of a run die young (statements, rows, events): the generational
     * collector spends about 40% less CPU than the incremental one applying 1,000
     * migrations. */
    lua_gc(L, LUA_GCGEN, 0, 0);
    profile_start(L);
    lua_pushcfunction(L, traceback);
    lua_pushcfunction(L, bootstrap);
    int rc = lua_pcall(L, 0, 0, 1);
    if (rc == LUA_OK) {
        int script = argc >= 3 && strcmp(argv[1], "--run-lua") == 0;
        lua_pushcfunction(L, script ? run_script : run_cli);
        lua_pushinteger(L, argc);
        lua_pushlightuserdata(L, argv);
        rc = lua_pcall(L, 2, 1, 1);
    }
    int code;
    if (rc == LUA_OK) {
        code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1)
                                    : (lua_toboolean(L, -1) || lua_isnil(L, -1) ? 0 : 1);
    } else {
        /* The message handler is not called for memory errors: format it here. */
        const char *msg = rc == LUA_ERRMEM ? "not enough memory" : lua_tostring(L, -1);
        fprintf(stderr, "moonshift: internal error: %s\n", msg ? msg : "(no message)");
        code = 1;
    }
    profile_write(L);
    hash_warm_up_end();
#ifndef MOONSHIFT_SANITIZE
    lua_setallocf(L, keep_at_exit, &alloc_state);
#endif
    lua_close(L);
    return code;
}
