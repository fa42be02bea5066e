"""The job contract's rules, each in one home: ids, the request spec, image references, hashing, steps, artifacts.

Every module here imports only the standard library and pydantic, so the SDK, the scheduler and the worker can all
use them (the SDK's client install has no server packages).
"""
