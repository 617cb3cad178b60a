-- Specs for the moonshift.fs binding, on a real temporary directory.
local fs = require("moonshift.fs")

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return data
end

-- Runs fn with the umask set to mask, restoring the old one even if fn fails.
local function with_umask(mask, fn)
  local old = fs.umask(mask)
  local ok, err = pcall(fn)
  fs.umask(old)
  if not ok then error(err, 0) end
end

describe("moonshift.fs", function()
  local dir

  before_each(function()
    dir = assert(fs.mkdtemp("/tmp/moonshift-fs-"))
  end)

  after_each(function()
    assert(fs.remove_tree(dir))
  end)

  describe("list", function()
    it("returns the names sorted bytewise, without . and ..", function()
      for _, name in ipairs({ "b", "a", "B", "_x", "a.b", "10", "9" }) do
        write_file(dir .. "/" .. name, "")
      end
      assert(fs.mkdir_p(dir .. "/sub", 448))
      assert.same({ "10", "9", "B", "_x", "a", "a.b", "b", "sub" }, fs.list(dir))
    end)

    it("returns an empty table for an empty directory", function()
      assert.same({}, fs.list(dir))
    end)

    it("names the path on failure", function()
      local ok, msg, code = fs.list(dir .. "/missing")
      assert.is_nil(ok)
      assert.truthy(msg:find(dir .. "/missing", 1, true))
      assert.equal("ENOENT", code)
    end)
  end)

  describe("fingerprint", function()
    local m

    before_each(function()
      m = dir .. "/m"
      assert(fs.mkdir_p(m .. "/sub", 448))
      write_file(m .. "/a", "1")
      write_file(m .. "/sub/b", "2")
      write_file(dir .. "/target", "3")
      assert(fs.symlink(dir .. "/target", m .. "/link"))
    end)

    -- Runs change and says whether the fingerprint of m moved.
    local function moves(change)
      local before, newest = fs.fingerprint(m)
      assert.matches("^%x+$", before)
      assert.equal(64, #before)
      assert.is_true(newest > 0)
      assert.equal(before, (fs.fingerprint(m)))
      change()
      return fs.fingerprint(m) ~= before
    end

    it("moves when a name is added, removed or renamed, one level of directories down", function()
      assert.is_true(moves(function() write_file(m .. "/c", "") end))
      assert.is_true(moves(function() assert(fs.remove(m .. "/c")) end))
      assert.is_true(moves(function() assert(fs.rename(m .. "/a", m .. "/x")) end))
      assert.is_true(moves(function() write_file(m .. "/sub/c", "") end))
      assert.is_true(moves(function() assert(fs.rename(m .. "/sub/c", m .. "/sub/d")) end))
    end)

    it("moves when a file, or what a link points at, is written, even to the same size", function()
      assert.is_true(moves(function() write_file(m .. "/a", "9") end))
      assert.is_true(moves(function() write_file(m .. "/sub/b", "9") end))
      assert.is_true(moves(function() write_file(dir .. "/target", "9") end))
      assert.is_true(moves(function() assert(fs.chmod(m .. "/a", 384)) end)) -- the ctime
    end)

    it("does not move when nothing changes, nor for files outside it", function()
      assert.is_false(moves(function() write_file(dir .. "/elsewhere", "") end))
    end)

    it("is taken on a thread by fingerprint_begin, with the same result", function()
      local job = fs.fingerprint_begin(m)
      local hex, newest = job:wait()
      assert.same({ fs.fingerprint(m) }, { hex, newest })
      assert.has_error(function() job:wait() end)
      local missing, msg, code = fs.fingerprint_begin(dir .. "/missing"):wait()
      assert.is_nil(missing)
      assert.truthy(msg:find(dir .. "/missing", 1, true))
      assert.equal("ENOENT", code)
      fs.fingerprint_begin(m) -- never waited for: collected, its thread joined
      collectgarbage()
    end)

    it("says the newest change and names a directory it cannot read", function()
      local _, newest = fs.fingerprint(m)
      assert.is_true(math.abs(newest - fs.now()) < 60)
      local ok, msg, code = fs.fingerprint(dir .. "/missing")
      assert.is_nil(ok)
      assert.truthy(msg:find(dir .. "/missing", 1, true))
      assert.equal("ENOENT", code)
    end)
  end)

  describe("stat", function()
    it("describes files, directories and links", function()
      local file = dir .. "/f"
      write_file(file, "12345")
      assert(fs.chmod(file, 384))
      local st = assert(fs.stat(file))
      assert.equal("file", st.type)
      assert.equal(5, st.size)
      assert.equal(384, st.mode)
      assert.is_true(math.abs(st.mtime - os.time()) < 60)
      for _, field in ipairs({ "uid", "gid", "ino", "dev", "mtime" }) do
        assert.equal("integer", math.type(st[field]), field)
      end
      assert.equal("directory", fs.stat(dir).type)
      assert(fs.symlink(file, dir .. "/l"))
      assert.equal("file", fs.stat(dir .. "/l").type)
      assert.equal("link", fs.stat(dir .. "/l", false).type)
      assert.equal(st.ino, fs.stat(dir .. "/l", true).ino)
      assert.equal("other", fs.stat("/dev/null").type)
    end)

    it("names the path on failure", function()
      local ok, msg, code = fs.stat(dir .. "/nope")
      assert.is_nil(ok)
      assert.truthy(msg:find(dir .. "/nope", 1, true))
      assert.equal("ENOENT", code)
    end)
  end)

  describe("read", function()
    it("reads whole binary files", function()
      local data = string.rep("a\0b\255", 100000)
      write_file(dir .. "/bin", data)
      assert.equal(data, fs.read(dir .. "/bin"))
      write_file(dir .. "/empty", "")
      assert.equal("", fs.read(dir .. "/empty"))
    end)

    it("names the path on failure", function()
      local ok, msg, code = fs.read(dir .. "/nope")
      assert.is_nil(ok)
      assert.truthy(msg:find(dir .. "/nope", 1, true))
      assert.equal("ENOENT", code)
      assert.equal("EISDIR", select(3, fs.read(dir)))
    end)
  end)

  describe("write_atomic", function()
    it("replaces the content and sets the mode regardless of the umask", function()
      local path = dir .. "/conf"
      write_file(path, "old")
      with_umask(2, function()
        assert.is_true(fs.write_atomic(path, "new\0content"))
        assert.equal("new\0content", read_file(path))
        assert.equal(420, fs.stat(path).mode)
        assert.is_true(fs.write_atomic(path, "secret", 384))
        assert.equal(384, fs.stat(path).mode)
        assert.is_true(fs.write_atomic(dir .. "/wide", "x", 438))
        assert.equal(438, fs.stat(dir .. "/wide").mode)
      end)
      assert.same({ "conf", "wide" }, fs.list(dir))
    end)

    it("fails, names the path and leaves the old file alone when it cannot write", function()
      local path = dir .. "/keep"
      write_file(path, "old")
      -- Root ignores permission bits, so fail by a missing directory and by a parent that
      -- is a regular file.
      local missing = dir .. "/no-such-dir/file"
      local ok, msg, code = fs.write_atomic(missing, "new")
      assert.is_nil(ok)
      assert.truthy(msg:find(missing, 1, true))
      assert.equal("ENOENT", code)
      local under_file = path .. "/child"
      ok, msg, code = fs.write_atomic(under_file, "new")
      assert.is_nil(ok)
      assert.truthy(msg:find(under_file, 1, true))
      assert.equal("ENOTDIR", code)
      -- A directory in the way of the rename: the temp file must not be left behind.
      assert(fs.mkdir_p(dir .. "/taken/inner", 493))
      ok, msg, code = fs.write_atomic(dir .. "/taken", "new")
      assert.truthy(msg:find(dir .. "/taken", 1, true))
      assert.is_nil(ok)
      assert.equal("EISDIR", code)
      assert.equal("old", read_file(path))
      assert.same({ "keep", "taken" }, fs.list(dir))
    end)

    it("raises on a bad mode", function()
      assert.has_error(function() fs.write_atomic(dir .. "/x", "data", 99999) end)
      assert.has_error(function() fs.write_atomic(dir .. "/x", nil) end)
    end)
  end)

  describe("open_excl", function()
    it("creates a new file with the mode even under umask 0", function()
      local path = dir .. "/new"
      with_umask(0, function()
        local f <close> = assert(fs.open_excl(path, 384))
        assert.is_true(f:write("part 1, "))
        assert.is_true(f:write(string.rep("z", 200000)))
        assert.is_true(f:fsync())
        assert.is_true(f:close())
        assert.is_true(f:close())
        assert.has_error(function() f:write("more") end)
      end)
      assert.equal(384, fs.stat(path).mode)
      assert.equal("part 1, " .. string.rep("z", 200000), read_file(path))
    end)

    it("refuses an existing file and a planted symlink", function()
      local path = dir .. "/exists"
      write_file(path, "mine")
      local f, msg, code = fs.open_excl(path, 384)
      assert.is_nil(f)
      assert.truthy(msg:find(path, 1, true))
      assert.equal("EEXIST", code)
      local target = dir .. "/target"
      local link = dir .. "/planted"
      assert(fs.symlink(target, link))
      f, msg, code = fs.open_excl(link, 384)
      assert.is_nil(f)
      assert.truthy(msg:find(link, 1, true))
      assert.equal("EEXIST", code)
      assert.is_false(fs.exists(target))
      assert.equal("mine", read_file(path))
    end)
  end)

  describe("fsync", function()
    it("flushes a file and a directory", function()
      local path = dir .. "/dump"
      write_file(path, "data")
      assert.is_true(fs.fsync(path))
      assert.is_true(fs.fsync(dir))
      assert.equal("data", read_file(path))
    end)

    it("flushes a file it may only write", function()
      local path = dir .. "/write-only"
      write_file(path, "data")
      assert(fs.chmod(path, 128)) -- 0o200
      assert.is_true(fs.fsync(path))
    end)

    it("returns nil, message and code for a missing path", function()
      local path = dir .. "/missing"
      local ok, msg, code = fs.fsync(path)
      assert.is_nil(ok)
      assert.truthy(msg:find(path, 1, true))
      assert.equal("ENOENT", code)
    end)

    it("raises without a path", function()
      assert.has_error(function() fs.fsync() end)
    end)
  end)

  describe("mkdir_p", function()
    it("creates nested directories with the mode", function()
      local path = dir .. "/a/b//c/"
      with_umask(18, function()
        assert.is_true(fs.mkdir_p(path, 448))
      end)
      for _, p in ipairs({ dir .. "/a", dir .. "/a/b", dir .. "/a/b/c" }) do
        local st = assert(fs.stat(p))
        assert.equal("directory", st.type)
        assert.equal(448, st.mode)
      end
      assert.is_true(fs.mkdir_p(path, 448))
    end)

    it("never changes the mode of an existing directory", function()
      local existing = dir .. "/existing"
      assert(fs.mkdir_p(existing, 493))
      assert.equal(493, fs.stat(existing).mode)
      assert.is_true(fs.mkdir_p(existing .. "/new", 448))
      assert.equal(493, fs.stat(existing).mode)
      assert.equal(448, fs.stat(existing .. "/new").mode)
    end)

    it("fails with the path of a component that is a file", function()
      write_file(dir .. "/file", "")
      local ok, msg, code = fs.mkdir_p(dir .. "/file/sub", 448)
      assert.is_nil(ok)
      assert.truthy(msg:find(dir .. "/file", 1, true))
      assert.equal("ENOTDIR", code)
    end)
  end)

  describe("mkdtemp", function()
    it("creates a private directory with the prefix", function()
      local path = assert(fs.mkdtemp(dir .. "/t-"))
      assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/t%-%w%w%w%w%w%w$", path)
      assert.equal(448, fs.stat(path).mode)
      local ok, msg, code = fs.mkdtemp(dir .. "/missing/t-")
      assert.is_nil(ok)
      assert.truthy(msg:find(dir .. "/missing/t-", 1, true))
      assert.equal("ENOENT", code)
    end)
  end)

  describe("remove and remove_tree", function()
    it("removes files and empty directories", function()
      write_file(dir .. "/f", "")
      assert(fs.mkdir_p(dir .. "/d", 448))
      assert.is_true(fs.remove(dir .. "/f"))
      assert.is_true(fs.remove(dir .. "/d"))
      local ok, msg, code = fs.remove(dir .. "/f")
      assert.is_nil(ok)
      assert.truthy(msg:find(dir .. "/f", 1, true))
      assert.equal("ENOENT", code)
    end)

    it("removes nested content without following a symlink out of the tree", function()
      local outside = assert(fs.mkdtemp("/tmp/moonshift-outside-"))
      write_file(outside .. "/precious", "keep me")
      local tree = dir .. "/tree"
      assert(fs.mkdir_p(tree .. "/a/b/c", 448))
      write_file(tree .. "/a/b/c/deep", "x")
      write_file(tree .. "/a/file", "x")
      assert(fs.symlink(outside, tree .. "/a/link-to-outside"))
      assert(fs.symlink(outside .. "/precious", tree .. "/link-to-file"))
      local ok, err = fs.remove_tree(tree)
      local survived = read_file(outside .. "/precious")
      assert(fs.remove_tree(outside))
      assert.is_true(ok, err)
      assert.is_false(fs.exists(tree))
      assert.equal("keep me", survived)
    end)

    it("removes a symlink to a directory, not the directory", function()
      local outside = assert(fs.mkdtemp("/tmp/moonshift-outside-"))
      assert(fs.symlink(outside, dir .. "/link"))
      assert.is_true(fs.remove_tree(dir .. "/link"))
      local st = fs.stat(outside)
      assert(fs.remove_tree(outside))
      assert.equal("directory", st and st.type)
      assert.is_nil(fs.stat(dir .. "/link", false))
    end)

    it("treats a missing path as already removed", function()
      assert.is_true(fs.remove_tree(dir .. "/never-there"))
    end)
  end)

  describe("links, names and ownership", function()
    it("renames, chmods, chowns, links and resolves", function()
      local a, b = dir .. "/a", dir .. "/b"
      write_file(a, "data")
      assert.is_true(fs.rename(a, b))
      assert.is_false(fs.exists(a))
      local ok, msg, code = fs.rename(a, b)
      assert.is_nil(ok)
      assert.truthy(msg:find(a, 1, true))
      assert.equal("ENOENT", code)
      assert.is_true(fs.chmod(b, 256))
      assert.equal(256, fs.stat(b).mode)
      local st = fs.stat(b)
      assert.is_true(fs.chown(b, st.uid, st.gid))
      assert.equal("ENOENT", select(3, fs.chmod(a, 256)))
      assert.is_true(fs.symlink("b", dir .. "/l"))
      assert.equal("b", fs.readlink(dir .. "/l"))
      assert.equal("EEXIST", select(3, fs.symlink("b", dir .. "/l")))
      assert.equal("EINVAL", select(3, fs.readlink(b)))
      local real = fs.realpath(dir)
      assert.equal(real .. "/b", fs.realpath(dir .. "/l"))
      assert.equal("ENOENT", select(3, fs.realpath(dir .. "/nope")))
    end)

    it("reads long link targets", function()
      local target = string.rep("t", 1000)
      assert(fs.symlink(target, dir .. "/long"))
      assert.equal(target, fs.readlink(dir .. "/long"))
    end)

    it("tells whether a path exists, following links", function()
      assert.is_true(fs.exists(dir))
      assert.is_false(fs.exists(dir .. "/nope"))
      assert(fs.symlink(dir .. "/nope", dir .. "/dangling"))
      assert.is_false(fs.exists(dir .. "/dangling"))
    end)
  end)

  describe("process facts", function()
    it("answers isatty for names and descriptors", function()
      assert.is_boolean(fs.isatty("stdin"))
      assert.is_boolean(fs.isatty(2))
      assert.is_false(fs.isatty(9999))
      assert.has_error(function() fs.isatty("stdnothing") end)
    end)

    it("has a monotonic millisecond clock and a wall clock", function()
      local t1 = fs.clock_ms()
      local t2 = fs.clock_ms()
      assert.is_true(t2 >= t1)
      assert.is_true(math.abs(fs.now() - os.time()) < 2)
    end)

    it("knows the host name", function()
      assert.is_true(#fs.hostname() > 0)
    end)

    it("reads the umask without changing it and sets it", function()
      local old = fs.umask(18)
      assert.equal(18, fs.umask())
      assert.equal(18, fs.umask())
      assert.equal(18, fs.umask(old))
      assert.equal(old, fs.umask())
    end)
  end)
end)
