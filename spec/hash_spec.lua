-- Specs for the moonshift.hash binding: SHA-256 of strings and (streamed) files.
local hash = require("moonshift.hash")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")

local MIB = 1024 * 1024
local PEAK_LIMIT_KB = 20480

-- The binary running these specs, to start child scripts with the real bindings.
local function moonshift_bin()
  local bin = os.getenv("MOONSHIFT_BIN")
  if bin and bin ~= "" then return bin end
  return fs.readlink("/proc/self/exe") or "build/moonshift"
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

describe("moonshift.hash", function()
  local dir

  before_each(function()
    dir = assert(fs.mkdtemp("/tmp/moonshift-hash-"))
  end)

  after_each(function()
    assert(fs.remove_tree(dir))
  end)

  describe("sha256", function()
    it("matches the known vectors for the empty string and abc", function()
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        hash.sha256(""))
      assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        hash.sha256("abc"))
    end)

    it("hashes binary data including NUL bytes", function()
      assert.equal(hash.sha256("a\0b"), hash.sha256("a\0b"))
      assert.not_equal(hash.sha256("a\0b"), hash.sha256("a\0c"))
    end)

    it("raises on a non-string argument", function()
      assert.has_error(function() hash.sha256({}) end)
    end)
  end)

  describe("sha256_file", function()
    it("hashes a small file like sha256 hashes its content", function()
      local path = dir .. "/small"
      write_file(path, "abc")
      assert.equal(hash.sha256("abc"), hash.sha256_file(path))
    end)

    it("skips the first bytes asked for (a BOM)", function()
      local path = dir .. "/bom"
      write_file(path, "\239\187\191select 1;\n")
      assert.equal(hash.sha256("select 1;\n"), hash.sha256_file(path, 3))
      assert.equal(hash.sha256(""), hash.sha256_file(path, 100))
    end)

    it("agrees with sha256sum on a 100 MB file using less than 20 MB of memory", function()
      local path = dir .. "/big"
      local f = assert(io.open(path, "wb"))
      for i = 1, 100 do
        -- Vary each chunk so a chunk-skipping bug changes the digest.
        assert(f:write(string.rep(string.char(i % 256), MIB - 8), string.format("%08d", i)))
      end
      assert(f:close())

      local sum = assert(proc.run({ "sha256sum", path }))
      assert.equal(0, sum.code)
      local expected = sum.stdout:match("^(%x+)")

      local script = dir .. "/hash_file.lua"
      write_file(script, [[
local hex, err = require("moonshift.hash").sha256_file(arg[1])
io.write(assert(hex, err), "\n")
for line in io.lines("/proc/self/status") do
  local kb = line:match("^VmHWM:%s*(%d+)")
  if kb then io.write(kb, "\n") end
end
]])
      local argv = { moonshift_bin(), "--run-lua", script, path }
      local use_time = fs.exists("/usr/bin/time")
      if use_time then
        table.insert(argv, 1, "/usr/bin/time")
        table.insert(argv, 2, "-f")
        table.insert(argv, 3, "%M")
      end
      -- the peak RSS hashing the file, less that of hashing an empty one (the sanitizers
      -- alone take more than the limit)
      local function peak_kb(file)
        argv[#argv] = file
        local r = assert(proc.run(argv))
        assert.equal(0, r.code, r.stderr)
        local hex, hwm = r.stdout:match("^(%x+)\n(%d+)\n$")
        return tonumber(use_time and r.stderr:match("(%d+)%s*$") or hwm), hex
      end
      local empty = dir .. "/empty"
      write_file(empty, "")
      local base = peak_kb(empty)
      local peak, hex = peak_kb(path)
      assert.equal(expected, hex)
      assert.is_true(peak - base < PEAK_LIMIT_KB, string.format("peak RSS %d kB, %d kB more " ..
        "than for an empty file", peak, peak - base))
    end)

    it("returns nil, a message naming the path and ENOENT for a missing file", function()
      local path = dir .. "/missing"
      local hex, msg, code = hash.sha256_file(path)
      assert.is_nil(hex)
      assert.truthy(msg:find(path, 1, true))
      assert.equal("ENOENT", code)
    end)

    it("fails on a directory with EISDIR", function()
      local hex, msg, code = hash.sha256_file(dir)
      assert.is_nil(hex)
      assert.truthy(msg:find(dir, 1, true))
      assert.equal("EISDIR", code)
    end)
  end)

  it("reports the OpenSSL version", function()
    assert.matches("^OpenSSL %d", hash.openssl_version())
  end)
end)
