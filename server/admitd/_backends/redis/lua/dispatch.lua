-- dispatch: grant what fits now from every queue (after a bucket refill).
-- Returns {progress}.
reap()
return cjson.encode({progress = shown(dispatch_all(new_progress()))})
