-- The sample project's configuration: `make demo` runs it on a throwaway database.
return {
  database = env("DATABASE_URL"),
  migrations = "migrations",
  hooks = "hooks",
  lock_timeout = "3s",
  workflows = {
    -- moonshift do deploy -y: refuse on drift, apply, verify, report.
    deploy = function(ms, args)
      local st = assert(ms.status())
      if #st.drift > 0 then return nil, "drift in " .. st.drift[1].id .. "; not deploying" end
      local up = assert(ms.up({ auto_confirm = args.yes }))
      local checked = assert(ms.verify())
      return { applied = #(up.done or {}), verified = #checked.results, now_at = up.current }
    end,
  },
}
