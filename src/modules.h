/* The C binding modules the host preloads: one file each in src/. */
#ifndef MOONSHIFT_MODULES_H
#define MOONSHIFT_MODULES_H
#include <lua.h>
#include <pthread.h>

int luaopen_moonshift_pg(lua_State *L);
int luaopen_moonshift_hash(lua_State *L);
int luaopen_moonshift_proc(lua_State *L);
int luaopen_moonshift_fs(lua_State *L);
int luaopen_moonshift_sql(lua_State *L);
int luaopen_moonshift_redact(lua_State *L);
int luaopen_moonshift_records(lua_State *L);

/* Pushes n bytes as lowercase hex (hash.c). */
void push_hex(lua_State *L, const unsigned char *bytes, unsigned int n);

/* Turns off OpenSSL's exit handler (threads may outlive main) and initializes its digests
 * on a thread (hash.c); _end waits for that thread, before exit. */
void hash_warm_up_begin(void);
void hash_warm_up_end(void);

/* pthread_create for a helper thread that never handles a signal (the main thread keeps
 * handling them all); 0 or an errno (proc.c). */
int start_quiet_thread(pthread_t *thread, void *(*run)(void *), void *arg);

/* Async-signal-safe: cancels the statement of the connection marked with
 * conn:cancel_on_signal(true), if any (PQcancel is signal-safe). */
void pg_cancel_from_signal(void);

#endif
