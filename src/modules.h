/* The C binding modules the host preloads: one file each in src/. */
#ifndef MOONSHIFT_MODULES_H
#define MOONSHIFT_MODULES_H
#include <lua.h>

int luaopen_moonshift_pg(lua_State *L);
int luaopen_moonshift_hash(lua_State *L);
int luaopen_moonshift_proc(lua_State *L);
int luaopen_moonshift_fs(lua_State *L);
int luaopen_moonshift_sql(lua_State *L);
int luaopen_moonshift_redact(lua_State *L);
int luaopen_moonshift_records(lua_State *L);
int luaopen_moonshift_host(lua_State *L);

/* Pushes n bytes as lowercase hex (hash.c). */
void push_hex(lua_State *L, const unsigned char *bytes, unsigned int n);

/* The Lua state with the allocator host.memory_limit caps (host.c), and its closing: every
 * finalizer runs, but outside the sanitizers the memory is left to the process exit. */
lua_State *host_newstate(void);
void host_close(lua_State *L);

/* Async-signal-safe: cancels the statement of the connection marked with
 * conn:cancel_on_signal(true), if any (PQcancel is signal-safe). */
void pg_cancel_from_signal(void);

/* Async-signal-safe: how many SIGINT/SIGTERM have arrived (host.c), so a wait can tell
 * that one came while it waited. */
int host_signal_count(void);

#endif
