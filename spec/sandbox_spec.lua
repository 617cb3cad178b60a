-- sandbox: the environment migrate.lua, companions and hooks run in, and loading files into it.
local sandbox = require("moonshift.sandbox")
local helpers = require("spec.helpers")

describe("sandbox", function()
  describe("env", function()
    it("offers the safe base functions and libraries, without os, io, debug or dofile", function()
      local env = sandbox.env()
      for _, name in ipairs({ "assert", "error", "ipairs", "pairs", "pcall", "xpcall", "select",
        "setmetatable", "tonumber", "tostring", "type" }) do
        assert.are.equal("function", type(env[name]), name)
      end
      for _, name in ipairs({ "string", "table", "math", "utf8", "coroutine" }) do
        assert.are.equal("table", type(env[name]), name)
      end
      assert.is_nil(env.io)
      assert.is_nil(env.debug)
      assert.is_nil(env.dofile)
      assert.is_nil(env.loadfile)
      assert.is_nil(env.collectgarbage)
      assert.is_nil(env.package)
    end)

    it("hands out no metatable of the host's: a string's is its own, over its own string", function()
      local env = sandbox.env()
      local smt = env.getmetatable("")
      assert.are_not.equal(getmetatable(""), smt)
      assert.are.equal(env.string, smt.__index)
      smt.__index.find = nil -- its copy only
      assert.are.equal(1, ("abc"):find("a"))
      local _, perr = require("moonshift.pg").connect("postgresql:///x?host=/nonexistent")
      assert.is_nil(env.getmetatable(perr))
      assert.is_nil(env.getmetatable(require("moonshift.errors").new("hook", "x")))
      local mt = {}
      assert.are.equal(mt, env.getmetatable(env.setmetatable({}, mt)))
      assert.are.equal("locked", env.getmetatable(env.setmetatable({}, { __metatable = "locked" })))
    end)

    it("refuses a __gc metamethod (it would run later, outside every limit)", function()
      local env = sandbox.env()
      assert.has_error(function() env.setmetatable({}, { __gc = function() end }) end,
        "__gc is not allowed here")
    end)

    it("gives coroutines the time limit of the code that creates them", function()
      local env = assert(sandbox.env())
      local chunk = assert(env.load("coroutine.wrap(function() while true do end end)()"))
      local ok, err = sandbox.call({ ms = 50, bytes = 1 << 20 }, chunk)
      assert.is_false(ok)
      assert.is_true(sandbox.made_limit(err))
      assert.matches("exceeded its time limit", err.message)
      chunk = assert(env.load("local co = coroutine.create(function() while true do end end)\n" ..
        "while true do coroutine.resume(co) end"))
      ok, err = sandbox.call({ ms = 50, bytes = 1 << 20 }, chunk)
      assert.is_false(ok)
      assert.is_true(sandbox.made_limit(err))
    end)

    it("keeps only os.time, date, clock and difftime", function()
      local env = sandbox.env()
      local names = {}
      for k in pairs(env.os) do names[#names + 1] = k end
      table.sort(names)
      assert.are.same({ "clock", "date", "difftime", "time" }, names)
    end)

    it("has no string.dump, and changing its libraries leaves the real ones alone", function()
      local env = sandbox.env()
      assert.is_nil(env.string.dump)
      assert.are.equal("function", type(string.dump))
      env.string.upper = nil
      env.table.insert = nil
      assert.are.equal("function", type(string.upper))
      assert.are.equal("function", type(table.insert))
    end)

    it("gives each call a table of its own, whose _G is itself", function()
      local a, b = sandbox.env(), sandbox.env()
      assert.are_not.equal(a, b)
      assert.are.equal(a, a._G)
      a.leaked = true
      assert.is_nil(b.leaked)
      assert.is_nil(rawget(_G, "leaked"))
    end)

    it("adds the names given, replacing its own", function()
      local log = function() end
      local env = sandbox.env({ log = log, print = false })
      assert.are.equal(log, env.log)
      assert.is_false(env.print)
    end)

    it("requires only moonshift.verify and cjson, as copies of its own", function()
      local env = sandbox.env()
      local verify = env.require("moonshift.verify")
      assert.are.same(require("moonshift.verify"), verify)
      assert.are_not.equal(require("moonshift.verify"), verify)
      assert.are.equal(verify, env.require("moonshift.verify"))
      assert.are_not.equal(verify, sandbox.env().require("moonshift.verify"))
      local cjson = env.require("cjson")
      assert.are_not.equal(require("cjson"), cjson)
      assert.are.equal('{"a":1}', cjson.encode({ a = 1 }))
      cjson.encode_max_depth(1) -- its own settings: the host's encoder keeps its own
      assert.are.equal('{"a":{"b":1}}', require("cjson").encode({ a = { b = 1 } }))
      for _, name in ipairs({ "moonshift.fs", "moonshift.proc", "moonshift.pg", "os", "io", "lfs" }) do
        assert.has_error(function() env.require(name) end,
          "require of '" .. name .. "' is not allowed here")
      end
    end)

    it("loads text chunks into the sandbox and refuses bytecode", function()
      local env = sandbox.env()
      local chunk = assert(env.load("return os, io, string.dump"))
      local os_, io_, dump = chunk()
      assert.are.equal(env.os, os_)
      assert.is_nil(io_)
      assert.is_nil(dump)
      local f, err = env.load(string.dump(function() return 1 end))
      assert.is_nil(f)
      assert.matches("binary", err)
    end)

    it("loads into another environment when one is given", function()
      local env = sandbox.env()
      local chunk = assert(env.load("return x", "=chunk", "t", { x = 42 }))
      assert.are.equal(42, chunk())
    end)

    it("lets pcall and xpcall catch ordinary errors", function()
      local env = sandbox.env()
      local ok, err = env.pcall(error, "boom", 0)
      assert.is_false(ok)
      assert.are.equal("boom", err)
      local handled
      ok = env.xpcall(function() error({ code = 1 }) end, function(e) handled = e end)
      assert.is_false(ok)
      assert.are.same({ code = 1 }, handled)
      assert.are.same({ true, 1, 2 }, { env.pcall(function() return 1, 2 end) })
    end)

    it("lets pcall and xpcall not swallow a time or memory limit", function()
      local env = sandbox.env()
      local _, limit = sandbox.call({ ms = 1, bytes = 1 << 20 }, function()
        while true do end
      end)
      assert.is_true(sandbox.made_limit(limit))
      local ok, err = pcall(env.pcall, error, limit)
      assert.is_false(ok)
      assert.are.equal(limit, err)
      -- a table that only says it is a limit is caught like any error
      assert.is_false((env.pcall(error, { limit = true })))
      ok, err = pcall(env.pcall, error, "not enough memory", 0)
      assert.is_false(ok)
      assert.are.equal("not enough memory", err)
      ok, err = pcall(env.xpcall, function() error(limit) end, function(e) return e end)
      assert.is_false(ok)
      assert.are.equal(limit, err)
    end)

    it("prints to stderr, not stdout", function()
      local res = helpers.run({ "--run-lua", "/dev/stdin" }, {
        stdin = "require('moonshift.sandbox').env().print('to', 'stderr', nil, 1)\n" })
      assert.are.equal(0, res.code, res.stderr)
      assert.are.equal("", res.stdout)
      assert.are.equal("to\tstderr\tnil\t1\n", res.stderr)
    end)
  end)

  describe("dofile", function()
    local dir
    before_each(function() dir = helpers.tmpdir() end)
    after_each(function() helpers.rmdir(dir) end)

    local function file(name, text)
      helpers.write_files(dir, { [name] = text })
      return dir .. "/" .. name
    end

    it("runs a file in the given environment and returns its first value", function()
      local env = sandbox.env({ answer = 41 })
      local path = file("a.lua", "seen = true\nreturn answer + 1, 'second'\n")
      assert.are.equal(42, sandbox.dofile(path, env))
      assert.is_true(env.seen)
      assert.is_nil(rawget(_G, "seen"))
    end)

    it("names the chunk after chunkname in messages", function()
      local _, err = sandbox.dofile(file("b.lua", "\nerror('bad')\n"), sandbox.env(), "migrations/b.lua")
      assert.are.equal("migrations/b.lua:2: bad", err)
      _, err = sandbox.dofile(file("c.lua", "error('bad')\n"), sandbox.env())
      assert.are.equal(dir .. "/c.lua:1: bad", err)
    end)

    it("returns nil and the error for a syntax error, a raised table and a missing file", function()
      local none, err = sandbox.dofile(file("d.lua", "return {"), sandbox.env())
      assert.is_nil(none)
      assert.matches("d%.lua:1: .*expected", err)
      none, err = sandbox.dofile(file("e.lua", "error(setmetatable({}, " ..
        "{ __tostring = function() return 'custom' end }))"), sandbox.env())
      assert.is_nil(none)
      assert.are.equal("(error object is a table value)", err) -- its __tostring is not run
      none, err = sandbox.dofile(dir .. "/nope.lua", sandbox.env())
      assert.is_nil(none)
      assert.matches("nope%.lua", err)
    end)

    it("refuses a precompiled file", function()
      local path = dir .. "/f.luac"
      local f = assert(io.open(path, "wb"))
      f:write(string.dump(function() return 1 end))
      f:close()
      local none, err = sandbox.dofile(path, sandbox.env())
      assert.is_nil(none)
      assert.matches("binary", err)
    end)

    it("cannot reach os.execute or io from the file", function()
      local none, err = sandbox.dofile(file("g.lua", "return os.execute('true')"), sandbox.env())
      assert.is_nil(none)
      assert.matches("execute", err)
      none, err = sandbox.dofile(file("h.lua", "return io.open('/etc/passwd')"), sandbox.env())
      assert.is_nil(none)
      assert.matches("io", err)
    end)
  end)
end)
