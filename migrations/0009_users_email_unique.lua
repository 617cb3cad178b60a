-- A concurrent build can leave an invalid index behind: check it is valid and unique.
local verify = require("moonshift.verify")

return {
  verify = function(ctx)
    verify.index_exists(ctx, "users_email_normalized_key", { valid = true, unique = true })
  end,
}
