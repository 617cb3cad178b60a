-- `moonshift demo`: the sample project on a throwaway database, narrated for a newcomer.
local cluster = require("moonshift.cluster")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local config = require("moonshift.config")

local fmt = string.format

local demo = {}

local STEPS = {
  { "status", "What is applied and what is pending? (creates nothing)" },
  { "do deploy -y", "The deploy workflow in migrate.lua: refuse on drift, apply, verify." },
  { "verify", "Re-run every verification, read-only, as CI would after a deploy." },
  { "status", "Everything applied." },
  { "down -y", "Revert the newest migration (it has a down script)." },
  { "up -y --dry-run", "What `up` would run, without running it." },
  { "up -y", "And apply it again." },
  { "history", "The event log: every apply and revert, by whom, from where." },
}

--- Runs the demo; returns the exit code.
function demo.run(ui)
  local cfg = config.load({})
  if not cfg or not cfg.path or not fs.exists(cfg.migrations) then
    ui:error("demo: run it from the moonshift source tree (it needs migrate.lua and " ..
      "migrations/ of the sample project)")
    return 2
  end
  local self_exe = fs.readlink("/proc/self/exe")
  ui:result("Starting a throwaway PostgreSQL server (initdb in a temp dir, unix socket only)...")
  local c, err = cluster.start()
  if not c then
    ui:error("demo: cannot start a server: " .. tostring(err))
    return 4
  end
  local uri = assert(c:create_database("demo_app"))
  ui:result(fmt("Database: %s\nProject:  %s\n", uri, cfg.path))
  local code = 0
  for i, step in ipairs(STEPS) do
    ui:result(fmt("── %d. moonshift %s\n   %s", i, step[1], step[2]))
    local argv = { self_exe }
    for w in step[1]:gmatch("%S+") do argv[#argv + 1] = w end
    argv[#argv + 1] = "--database=" .. uri
    local env = proc.environ()
    env.NO_COLOR = "1"
    local res = proc.run(argv, { env = env, cwd = cfg.root, timeout = 120000 })
    local out = ((res and res.stderr or "") .. (res and res.stdout or "")):gsub("\n+$", "")
    ui:result("   " .. out:gsub("\n", "\n   ") .. "\n")
    if not res or res.code ~= 0 then
      ui:error(fmt("demo: step %d exited %s", i, tostring(res and res.code)))
      code = 1
      break
    end
  end
  c:stop()
  ui:result(code == 0 and "Done; the throwaway server is stopped and its directory removed." or
    "The throwaway server is stopped and its directory removed.")
  return code
end

return demo
