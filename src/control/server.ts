/**
 * The daemon's side of the control socket: accepts connections from the socket's owner only
 * (the socket file is mode 0600 in an owner-only directory), reads requests line by line, and
 * answers each through the handler table it is given.
 */
import fs from 'node:fs'
import net from 'node:net'
import createDebug from 'debug'
import type { Reply, Request } from './protocol.js'
import { ensureRuntimeDir } from './socket-path.js'

const debug = createDebug('snapfs:control')

export type Handler = (args: Record<string, unknown>) => Promise<unknown> | unknown

export class ControlServer {
  private readonly server: net.Server
  readonly path: string

  private constructor (server: net.Server, socketFile: string) {
    this.server = server
    this.path = socketFile
  }

  static async listen (socketFile: string, handlers: Record<string, Handler>): Promise<ControlServer> {
    ensureRuntimeDir()
    fs.rmSync(socketFile, { force: true })
    const server = net.createServer(socket => serve(socket, handlers))
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(socketFile, () => resolve())
    })
    fs.chmodSync(socketFile, 0o600)
    server.unref()
    debug('listening on %s', socketFile)
    return new ControlServer(server, socketFile)
  }

  close (): void {
    this.server.close()
    fs.rmSync(this.path, { force: true })
  }
}

function serve (socket: net.Socket, handlers: Record<string, Handler>): void {
  let buffered = ''
  socket.setEncoding('utf8')
  socket.on('error', () => socket.destroy())
  socket.on('data', chunk => {
    buffered += chunk
    let newline = buffered.indexOf('\n')
    while (newline !== -1) {
      const line = buffered.slice(0, newline)
      buffered = buffered.slice(newline + 1)
      if (line.length > 0) void answer(socket, line, handlers)
      newline = buffered.indexOf('\n')
    }
  })
}

async function answer (socket: net.Socket, line: string, handlers: Record<string, Handler>): Promise<void> {
  let reply: Reply
  let request: Request
  try {
    request = JSON.parse(line) as Request
  } catch {
    socket.end(JSON.stringify({ id: 0, ok: false, error: 'malformed request' }) + '\n')
    return
  }
  const handler = handlers[request.op]
  if (handler === undefined) {
    reply = { id: request.id, ok: false, error: `unknown operation "${request.op}"` }
  } else {
    try {
      reply = { id: request.id, ok: true, result: (await handler(request.args ?? {})) ?? null }
    } catch (err) {
      reply = { id: request.id, ok: false, error: (err as Error).message }
    }
  }
  if (!socket.destroyed) socket.write(JSON.stringify(reply) + '\n')
}
