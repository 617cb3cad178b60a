-- Randomized kill soak: SIGKILL a runner at random moments of a mixed transactional /
-- CREATE INDEX CONCURRENTLY set, check the invariants after each kill, then converge.
-- `make test-soak` runs 100 rounds (MOONSHIFT_SOAK_RUNS to change); CI runs 20. The kill
-- points come from the run's seed (printed; MOONSHIFT_SPEC_SEED=<seed> replays them).
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")
local invariants = require("spec.support.invariants")

local RUNS = tonumber(os.getenv("MOONSHIFT_SOAK_RUNS") or "100")

describe("kill soak #soak", function()
  local effects, files = {}, {}
  for i = 1, 10 do
    local v = string.format("%04d", i)
    if i % 4 == 0 then
      files["migrations/" .. v .. "_idx.up.sql"] = "-- moonshift:no-transaction\n" ..
        "CREATE INDEX CONCURRENTLY i" .. i .. " ON t" .. (i - 1) .. " (v);\n"
      files["migrations/" .. v .. "_idx.down.sql"] = "-- moonshift:no-transaction\n" ..
        "DROP INDEX CONCURRENTLY IF EXISTS i" .. i .. ";\n"
      effects[v] = "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = " ..
        "to_regclass('i" .. i .. "') AND indisvalid)"
    else
      files["migrations/" .. v .. "_t.up.sql"] = "CREATE TABLE t" .. i .. " (id int, v text);\n" ..
        "INSERT INTO t" .. i .. " SELECT g, md5(g::text) FROM generate_series(1, 20000) g;\n" ..
        "SELECT pg_sleep(0.05);\n"
      files["migrations/" .. v .. "_t.down.sql"] = "DROP TABLE t" .. i .. ";\n"
      effects[v] = "SELECT to_regclass('t" .. i .. "') IS NOT NULL"
    end
  end
  local db = helpers.database({ files = files })

  -- What an operator does with a dirty CREATE INDEX CONCURRENTLY: drop an invalid index,
  -- then let it run again.
  local function resolve_dirty(rows, note)
    for v, state in pairs(rows) do
      if state == "dirty" then
        local i = tonumber(v)
        helpers.query(db.uri, "DROP INDEX IF EXISTS i" .. i)
        local res = helpers.ms({ "force", v, "--not-applied", "-y" })
        assert.are.equal(0, res.code, note .. "\n" .. res.stderr)
      end
    end
  end

  it("keeps history and catalog in step across " .. RUNS .. " random kills, then converges", function()
    local rng = helpers.random()
    local killed_mid, finished = 0, 0
    for round = 1, RUNS do
      local p = helpers.spawn({ "up", "-y", "-q", "-d", db.uri }, db.dir)
      local at = rng.int(0, 350)
      local note = rng.note("round " .. round .. ", kill at " .. at .. " ms")
      proc.sleep(at)
      if p:running() then
        p:kill("KILL")
        killed_mid = killed_mid + 1
      else
        finished = finished + 1
      end
      local res = p:wait(30000)
      assert.is_truthy(res, note .. ": runner did not end")
      local state = invariants.check(db.uri, { effects = effects, killed = true, note = note })
      resolve_dirty(state.rows, note)
      if round % 10 == 0 then
        -- start over now and then, so kills keep landing in real work
        local down = helpers.ms({ "down", "--all", "-y" })
        assert.are.equal(0, down.code, note .. "\n" .. down.stderr)
      end
    end
    local final = helpers.ms({ "up", "-y" })
    assert.are.equal(0, final.code, rng.note() .. "\n" .. final.stderr)
    local state = invariants.check(db.uri, { effects = effects, note = rng.note() })
    local applied = 0
    for _, s in pairs(state.rows) do if s == "applied" then applied = applied + 1 end end
    assert.are.equal(10, applied, rng.note())
    assert.is_true(killed_mid > 0, rng.note("no round was killed mid-run"))
    print(string.format("\nsoak: %d rounds, %d killed mid-run, %d finished first", RUNS,
      killed_mid, finished))
  end)
end)
