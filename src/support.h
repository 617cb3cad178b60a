/* Helpers the bindings share: failures of the world as `nil, message, code`, metatables. */
#ifndef MOONSHIFT_SUPPORT_H
#define MOONSHIFT_SUPPORT_H
#include <lauxlib.h>
#include <lua.h>

/* Pushes nil, "<what>: <strerror(err)>", "ENOENT"-style code; returns 3. err is an errno
 * the caller saved right after the failing call: Lua calls (an allocation can run a
 * finalizer) may change errno, so it is never read here. */
int support_error(lua_State *L, int err, const char *what);

/* As support_error, with the "what" formatted as by lua_pushfstring. */
int support_errorf(lua_State *L, int err, const char *fmt, ...);

/* In the manner of luaL_fileresult: pushes true (1 result) when ok, else reads errno
 * before any Lua call and pushes nil, message, code (3). */
int support_result(lua_State *L, int ok, const char *what);

/* Creates the metatable `name` in the registry with the methods (NULL for none) as its
 * __index table and the metamethods (may be NULL) set on it; leaves the stack as it was. */
void support_new_meta(lua_State *L, const char *name, const luaL_Reg *methods,
                      const luaL_Reg *metamethods);

#endif
