"""biproto: the farm's protobuf messages and gRPC stubs (bibench.farm.v1).

Generated stubs are committed beside their .proto sources; protobuf never leaves the
transport modules that import this package.
"""
