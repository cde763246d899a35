// Sets (or, with "-", removes) the consumer_byte_rate quota of one client
// id on an Apache Kafka cluster: what librdkafka's Python binding cannot do
// (tests/helpers/quota.py). Run as a single-file program:
//   java -cp <kafka-clients jar>:<slf4j-api jar> ClientQuota.java <bootstrap> <client id> <bytes/s|->
import java.util.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.quota.*;

public class ClientQuota {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", args[0]);
        try (Admin admin = Admin.create(p)) {
            ClientQuotaEntity entity = new ClientQuotaEntity(Map.of(ClientQuotaEntity.CLIENT_ID, args[1]));
            Double rate = args[2].equals("-") ? null : Double.valueOf(args[2]);
            ClientQuotaAlteration alt = new ClientQuotaAlteration(entity,
                List.of(new ClientQuotaAlteration.Op("consumer_byte_rate", rate)));
            admin.alterClientQuotas(List.of(alt)).all().get();
        }
    }
}
