"""supervisord extensions for the pipeline.

- ``pipeline.supervisor.rpc:make_rpcinterface`` -- XML-RPC namespace ``pipeline``
  with ``pipeline.scale(program, count)``: change ``numprocs`` of a program in
  place, touching only the processes that are added or removed.
- ``pipeline.supervisor.ctl:make_ctlplugin`` -- the ``supervisorctl scale``
  command on top of it.

Nothing is imported here, so loading the ctl plugin stays cheap.
"""
