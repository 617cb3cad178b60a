/* Helpers the bindings share (see support.h). */
#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "support.h"

/* [.., what] -> [.., nil, message, code] */
static int push_failure(lua_State *L, int err) {
    /* strerror and strerrorname_np are read first: the pushes below may allocate. */
    const char *code = strerrorname_np(err);
    const char *text = strerror(err);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), text);
    lua_pushstring(L, code ? code : "EUNKNOWN");
    lua_remove(L, -4);
    return 3;
}

int support_error(lua_State *L, int err, const char *what) {
    lua_pushstring(L, what);
    return push_failure(L, err);
}

int support_errorf(lua_State *L, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return push_failure(L, err);
}

int support_result(lua_State *L, int ok, const char *what) {
    int err = errno;
    if (!ok)
        return support_error(L, err, what);
    lua_pushboolean(L, 1);
    return 1;
}

void support_new_meta(lua_State *L, const char *name, const luaL_Reg *methods,
                      const luaL_Reg *metamethods) {
    luaL_newmetatable(L, name); // [meta]
    if (metamethods)
        luaL_setfuncs(L, metamethods, 0);
    if (methods) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}
