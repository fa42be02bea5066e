"""A1111 webui API compatibility: existing webui API clients work unchanged against the farm.

`router` serves `/sdapi/v1/img2img`, progress, interrupt/skip and the start-up probes (samplers, models, options);
see `scheduler.a1111.routes` for what behaves better than the reference, `schema` for the request shape,
`translate` for request → job → answer, and `tenant_options` for the per-tenant options.
"""

from scheduler.a1111.routes import router

__all__ = ["router"]
