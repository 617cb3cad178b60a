local verify = require("moonshift.verify")

return {
  verify = function(ctx)
    verify.column(ctx, "users", "email_normalized", { type = "text", nullable = false })
  end,
}
