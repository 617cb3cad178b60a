-- Memberships join accounts and users: both must exist first, whatever their numbers.
local verify = require("moonshift.verify")

return {
  description = "who belongs to which account, and with which role",
  requires = { "0001", "0002" },
  verify = function(ctx)
    verify.constraint_exists(ctx, "memberships", "memberships_pkey", { type = "primary key" })
    verify.index_exists(ctx, "memberships_user_id", { table = "memberships" })
  end,
}
