"""Generated grpcio stubs of a minimal etcd v3 API subset (bench/etcdpb/etcd.proto) for bench.compare."""
