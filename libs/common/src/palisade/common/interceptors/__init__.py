"""Server interceptors shared by every service, in the order a service installs them.

Outermost first: logging (request id), metrics (sees the final status), error mapping (domain
exceptions -> status codes), caller assertion (innermost, so its refusals are mapped, counted
and logged like any other error). They run as one InterceptorChain: one grpc interceptor.
"""

from palisade.common.interceptors.assertion import CallerAssertionInterceptor
from palisade.common.interceptors.base import AroundInterceptor, InterceptorChain, RpcInfo
from palisade.common.interceptors.error_mapping import ErrorMappingInterceptor
from palisade.common.interceptors.logging import LoggingInterceptor
from palisade.common.interceptors.metrics import MetricsInterceptor

__all__ = [
    "AroundInterceptor",
    "CallerAssertionInterceptor",
    "ErrorMappingInterceptor",
    "InterceptorChain",
    "LoggingInterceptor",
    "MetricsInterceptor",
    "RpcInfo",
]
