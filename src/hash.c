/* moonshift.hash: SHA-256 of strings and files (OpenSSL EVP), as lowercase hex. */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "modules.h"
#include "support.h"

/* Files are streamed through a fixed buffer, so hashing a dump costs constant memory. */
#define CHUNK (64 * 1024)

void push_hex(lua_State *L, const unsigned char *md, unsigned int n) {
    static const char digits[] = "0123456789abcdef";
    char hex[2 * EVP_MAX_MD_SIZE];
    for (unsigned int i = 0; i < n; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 0xf];
    }
    lua_pushlstring(L, hex, 2 * (size_t)n);
}

/* An OpenSSL failure has no errno: it is reported as EIO with its own message. */
static int push_failure(lua_State *L, const char *path, int err) {
    if (err)
        return support_error(L, err, path);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: OpenSSL digest failure", path);
    lua_pushliteral(L, "EIO");
    return 3;
}

/* hash.sha256(s) -> hex */
static int hash_sha256(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(s, len, md, &n, EVP_sha256(), NULL))
        return luaL_error(L, "sha256: OpenSSL digest failure");
    push_hex(L, md, n);
    return 1;
}

/* hash.sha256_file(path [, skip]) -> hex | nil, msg, code: of the bytes after the first
 * `skip` (a BOM, say) */
static int hash_sha256_file(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    lua_Integer skip = luaL_optinteger(L, 2, 0);
    luaL_argcheck(L, skip >= 0, 2, "not a byte count");
    /* The buffer is Lua's, so nothing below needs freeing if the state runs out of memory. */
    unsigned char *buf = lua_newuserdatauv(L, CHUNK, 0);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    int err = 0, ok = 0;

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err = errno;
        goto done;
    }
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        goto done;
    for (;;) {
        ssize_t got = read(fd, buf, CHUNK);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            err = errno;
            goto done;
        }
        if (got == 0)
            break;
        unsigned char *from = buf;
        if (skip > 0) {
            lua_Integer k = skip < got ? skip : (lua_Integer)got;
            skip -= k;
            from += k;
            got -= (ssize_t)k;
        }
        if (!EVP_DigestUpdate(ctx, from, (size_t)got))
            goto done;
    }
    ok = EVP_DigestFinal_ex(ctx, md, &n);

done:
    if (fd >= 0)
        close(fd);
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return push_failure(L, path, err);
    push_hex(L, md, n);
    return 1;
}

/* hash.openssl_version() -> "OpenSSL 3.0.x ..." */
static int hash_openssl_version(lua_State *L) {
    lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
    return 1;
}

int luaopen_moonshift_hash(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"sha256", hash_sha256},
        {"sha256_file", hash_sha256_file},
        {"openssl_version", hash_openssl_version},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
