-- A command that fails before it needs its connection exits cleanly while that connection is
-- still being made on a helper thread (GSSAPI negotiation inside libpq): no signal, its code.
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

-- Runs per command; the crash this guards against (SIGABRT in Kerberos's exit handler,
-- k5_mutex_lock) showed in about 1 run of 6, so 100 of each leaves no chance to miss it.
local RUNS = 100
local COMMANDS = { { "up", "-y" }, { "down", "-y" }, { "status" } }

describe("early exit #e2e", function()
  local c, dir, url

  lazy_setup(function()
    c = helpers.cluster({
      listen = "127.0.0.1",
      port = 20000 + (proc.getpid() * 13 + math.random(0, 999)) % 10000,
      hba = { "host all all 127.0.0.1/32 trust" },
    })
    -- TCP, with libpq's default gssencmode=prefer: the connection starts with GSSAPI.
    url = string.format("postgresql://user:pw@127.0.0.1:%d/db", c.port)
    dir = helpers.tmpdir() -- empty: no migrations directory, a usage error
  end)
  lazy_teardown(function()
    if c then c:stop() end
    helpers.rmdir(dir)
  end)

  it("ends every usage error with exit code 2 while the connection is still being made",
    function()
      local outcomes, bad = {}, 0
      for _, command in ipairs(COMMANDS) do
        local args = { table.unpack(command) }
        args[#args + 1] = "--database"
        args[#args + 1] = url
        for _ = 1, RUNS do
          local res = helpers.run(args, { cwd = dir, timeout = 30000 })
          local key = string.format("%s: code=%s signal=%s", command[1], tostring(res.code),
            tostring(res.signal))
          outcomes[key] = (outcomes[key] or 0) + 1
          if res.code ~= 2 or res.signal then bad = bad + 1 end
        end
      end
      local lines = {}
      for key, n in pairs(outcomes) do lines[#lines + 1] = key .. " x" .. n end
      table.sort(lines)
      assert(bad == 0, string.format("%d of %d runs did not exit 2 cleanly:\n%s", bad,
        RUNS * #COMMANDS, table.concat(lines, "\n")))
    end)
end)
