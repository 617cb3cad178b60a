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
#include "job.h"
#include "modules.h"

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

/* os.exit as Lua's, ending through the job layer: a bare exit() would run the exit
 * handlers of libpq's libraries under a connection still being made. */
static int os_exit(lua_State *L) {
    int code = lua_isboolean(L, 1) ? (lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE)
                                   : (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
    if (lua_toboolean(L, 2))
        host_close(L);
    exit(job_exit(code));
}

static void route_os_exit(lua_State *L) {
    lua_getglobal(L, "os");
    lua_pushcfunction(L, os_exit);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
}

/* Runs under pcall: allocation failures while opening libraries are errors, not panics. */
static int bootstrap(lua_State *L) {
    luaL_openlibs(L);
    route_os_exit(L);
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
 * microseconds, and `status` of 10,000 migrations faulted ~7,000 pages. Saves 39 % of that
 * status, 8 % at 1,000 (bench/results/devices-*.md; MOONSHIFT_HEAP=plain switches it off). */
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
    /* A reader that goes away (`moonshift up --log-format json | head -1`) must not kill a
     * run between a migration's COMMIT and its log line: writes to it fail with EPIPE
     * instead, and the run stops before the next migration (moonshift(1), exit 141). So
     * must a file-size limit (ulimit -f) reached by the run log: the write fails with EFBIG
     * and is reported, as on a full disk. Children get the defaults back (proc.c resets
     * every disposition). */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    if (getenv("MOONSHIFT_HEAP") == NULL || strcmp(getenv("MOONSHIFT_HEAP"), "plain") != 0)
        tune_heap(); /* MOONSHIFT_HEAP=plain: libc's own (to weigh what this saves) */
    lua_State *L = host_newstate();
    if (L == NULL) {
        fputs("moonshift: cannot create Lua state: not enough memory\n", stderr);
        return job_exit(1);
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
    host_close(L);
    return job_exit(code);
}
