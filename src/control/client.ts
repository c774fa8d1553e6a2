/**
 * The client side of the control socket, used by the CLIs and the package API: finds the mount's
 * socket, sends one request and returns its result, or throws a UserError with one clear line.
 */
import net from 'node:net'
import { UserError } from '../errors.js'
import type { Reply } from './protocol.js'
import { socketPath } from './socket-path.js'
import { mountAt } from '../daemon/mounts.js'

let nextId = 1

/** Sends `op` to the daemon serving `mountpoint` (absolute) and returns the result. */
export async function call (mountpoint: string, op: string, args: Record<string, unknown> = {}): Promise<unknown> {
  const owner = /(?:^|,)user_id=(\d+)/.exec(mountAt(mountpoint)?.options ?? '')
  const file = socketPath(mountpoint, owner === null ? undefined : Number(owner[1]))
  const id = nextId++
  return await new Promise((resolve, reject) => {
    const socket = net.createConnection(file)
    let buffered = ''
    socket.setEncoding('utf8')
    socket.on('connect', () => socket.write(JSON.stringify({ id, op, args }) + '\n'))
    socket.on('data', chunk => {
      buffered += chunk
      const newline = buffered.indexOf('\n')
      if (newline === -1) return
      socket.end()
      const reply = JSON.parse(buffered.slice(0, newline)) as Reply
      if (reply.ok) resolve(reply.result)
      else reject(new UserError(reply.error))
    })
    socket.on('error', err => {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT' || code === 'ECONNREFUSED') reject(new UserError(`no snapfs daemon answers for ${mountpoint}`, 1))
      else if (code === 'EACCES') reject(new UserError(`permission denied on the control socket of ${mountpoint}`, 1))
      else reject(new UserError(`control socket of ${mountpoint}: ${err.message}`))
    })
    socket.on('close', () => reject(new UserError(`the daemon for ${mountpoint} closed the connection`)))
  })
}
